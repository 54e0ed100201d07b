#!/usr/bin/env bash
# Evaluate a released MedSAM-Agent policy (Qwen3-VL-8B, BF16, ~17 GB) with the agent protocol of
# `medsam-agent evaluate` on a manifest, and report Dice / IoU and the number of actions per case.
#
# For a machine with the checkpoint on disk and a GPU (>= 24 GB free), or with the checkpoint served by
# vLLM / SGLang. Nothing is downloaded.
#
#   MODEL=/ckpt/MedSAM-Agent-Qwen3-VL-8B-MedSAM2 CHECKPOINT=/ckpt/medsam2.pt scripts/run_mllm_eval.sh
#   ENDPOINT=http://127.0.0.1:8000/v1 MODEL_NAME=MedSAM-Agent-Qwen3-VL-8B-MedSAM2 \
#       CHECKPOINT=/ckpt/medsam2.pt scripts/run_mllm_eval.sh
#
# Serving (another terminal, vLLM):
#   vllm serve /ckpt/MedSAM-Agent-Qwen3-VL-8B-MedSAM2 --served-model-name MedSAM-Agent-Qwen3-VL-8B-MedSAM2 \
#       --dtype bfloat16 --max-model-len 16384 --limit-mm-per-prompt '{"image": 6}'
#
# Variables: MODEL (checkpoint dir) or ENDPOINT (+ MODEL_NAME, API_KEY); TOOL (default: the tool named in the
# checkpoint's name: MedSAM2 -> medsam2, IMISNet -> sam; else litemedsam); CHECKPOINT (the tool's weights);
# MANIFEST (default: ../shared/data/manifest.jsonl, else the bundled cases); OUT (default runs/mllm-eval-DATE);
# extra arguments are passed to `medsam-agent evaluate`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
MODEL="${MODEL:-}"
ENDPOINT="${ENDPOINT:-}"
MODEL_NAME="${MODEL_NAME:-}"
CHECKPOINT="${CHECKPOINT:-}"
OUT="${OUT:-runs/mllm-eval-$(date +%Y%m%d-%H%M%S)}"
if [ -z "${MANIFEST:-}" ]; then
  if [ -f ../shared/data/manifest.jsonl ]; then MANIFEST=../shared/data/manifest.jsonl
  else MANIFEST=MedSAMAgentLib/data/manifest.jsonl; fi
fi

if [ -n "$MODEL" ] && [ -n "$ENDPOINT" ] || [ -z "$MODEL$ENDPOINT" ]; then
  echo "run_mllm_eval: set exactly one of MODEL (checkpoint directory) or ENDPOINT (served model URL)" >&2
  exit 2
fi
name="${MODEL:-$MODEL_NAME}"
if [ -z "${TOOL:-}" ]; then
  case "$(echo "$name" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9')" in
    *medsam2*) TOOL=medsam2 ;;
    *imis*) TOOL=sam ;;
    *) TOOL=litemedsam ;;
  esac
fi

policy_args=(--policy mllm)
if [ -n "$MODEL" ]; then
  [ -d "$MODEL" ] || { echo "run_mllm_eval: no checkpoint directory at $MODEL" >&2; exit 2; }
  policy_args+=(--model "$MODEL")
  if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "run_mllm_eval: warning: no CUDA GPU visible; the 8B policy on CPU takes minutes per action" >&2
  fi
else
  policy_args+=(--endpoint "$ENDPOINT")
  [ -n "$MODEL_NAME" ] && policy_args+=(--model-name "$MODEL_NAME")
  [ -n "${API_KEY:-}" ] && export MEDSAM_AGENT_API_KEY="$API_KEY"
fi
tool_args=(--tool "$TOOL")
[ -n "$CHECKPOINT" ] && tool_args+=(--checkpoint "$CHECKPOINT")

mkdir -p "$OUT"
echo "policy: ${MODEL:-$ENDPOINT ($MODEL_NAME)}   tool: $TOOL   manifest: $MANIFEST   out: $OUT"
"$PYTHON" -m MedSAMAgentLib.cli evaluate --manifest "$MANIFEST" --protocol agent "${policy_args[@]}" \
  "${tool_args[@]}" --out "$OUT" "$@" 2>&1 | tee "$OUT/evaluate.log"

# A summary from the trajectory logs the evaluation wrote (final Dice/IoU, agent actions, pauses).
"$PYTHON" - "$OUT" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.trajectory import read_episodes

logs = sorted(Path(sys.argv[1]).rglob("*.jsonl"))
episodes = [e for e in read_episodes(*logs) if e.header.get("policy", {}).get("name") == "mllm"] if logs else []
if not episodes:
    sys.exit("run_mllm_eval: no MLLM trajectory logs under " + sys.argv[1] + " (see evaluate.log)")
dice = [e.end["dice"] for e in episodes if e.end and e.end.get("dice") is not None]
iou = [e.end["iou"] for e in episodes if e.end and e.end.get("iou") is not None]
actions = [sum(isinstance(s.applied, (Box, Point)) for s in e.steps) for e in episodes]
stops = sum(any(isinstance(s.applied, Stop) for s in e.steps) for e in episodes)
status = {}
for e in episodes:
    key = (e.end or {}).get("status", "unfinished")
    status[key] = status.get(key, 0) + 1
print(f"episodes {len(episodes)}   mean Dice {np.mean(dice):.4f}   mean IoU {np.mean(iou):.4f}" if dice else
      f"episodes {len(episodes)}   (no ground truth scores)")
print(f"box/point actions per episode {np.mean(actions):.2f} (stop not counted)   "
      f"episodes ended by the model's stop {stops}   status {status}")
EOF
