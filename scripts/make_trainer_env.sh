#!/usr/bin/env bash
# Build a trainer's own virtual environment: scripts/make_trainer_env.sh {trl|llamafactory|verl} -> .venv-NAME
# The trainers pin versions that conflict with each other and with the project's (transformers 5.24.0):
#   trl          TRL 1.16.0 works with transformers 5.24.0, so it also lives in the project env (the `training`
#                extra; CI runs its GRPO test there); this builds the same set alone.
#   llamafactory LLaMA-Factory 0.9.5: transformers<=5.6.0, datasets<=4.0.0, trl<=0.24, peft 0.18.1, gradio<=5.50.
#                Its torchaudio requirement is left out on purpose: no torchaudio release matches torch 2.14.1 and
#                nothing of the image SFT recipe uses it (`pip check` reports just that).
#   verl         verl 0.9.1: transformers>=5.5.3,<5.11 (5.10.4 here), ray, tensordict<=0.10; the medsam-agent core
#                (tools, reward, environment) is installed into it, for the tool classes and the reward. The GPU
#                rollout engine (vLLM or SGLang) is not part of it.
# requirements/NAME.txt holds every package of the environment at the exact version checked (installed with
# --no-deps, so nothing else is resolved or downloaded). torch/torchvision are the project's 2.14.1 / 0.29.1.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-}
case "$NAME" in trl|llamafactory|verl) ;; *) echo "usage: scripts/make_trainer_env.sh trl|llamafactory|verl (got '$NAME')" >&2; exit 2;; esac
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-$NAME}   # VENV=... builds elsewhere (e.g. to check the lock from scratch)
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip install -q"
$PIP torch==2.14.1 torchvision==0.29.1
case "$NAME" in
  trl)
    $PIP -c requirements/constraints.txt -r requirements/trl.txt -e ".[mllm,training]" pytest==9.0.3 ;;
  llamafactory)
    $PIP --no-deps -r requirements/llamafactory.txt ;;
  verl)
    $PIP --no-deps -r requirements/verl.txt
    $PIP --no-deps -e . ;;
esac
"$VENV/bin/pip" check || true   # llamafactory: only its unused torchaudio requirement is reported
touch "$VENV/.installed"
echo "built $VENV"
