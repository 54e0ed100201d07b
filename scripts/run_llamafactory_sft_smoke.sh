#!/usr/bin/env bash
# 2 steps of LLaMA-Factory SFT (LoRA, then full) on a tiny random-weight Qwen3-VL, on the CPU, from a fresh export:
# trajectories generate (2 bundled cases) -> trajectories export --format llamafactory -> the export *moved* to
# another folder -> llamafactory-cli train with the repository's configs. Proves the recipe end to end; the
# model learns nothing useful. Needs .venv (make install) and .venv-llamafactory
# (scripts/make_trainer_env.sh llamafactory). Usage: scripts/run_llamafactory_sft_smoke.sh [OUT] (default runs/sft-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/sft-smoke}
PY=.venv/bin/python
LF=${LLAMAFACTORY_VENV:-.venv-llamafactory}/bin/llamafactory-cli   # LLAMAFACTORY_VENV: another env built by make_trainer_env.sh
[ -x "$LF" ] || { echo "no $LF: run scripts/make_trainer_env.sh llamafactory first" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
echo "== generate + export ($(date -u +%T))"
.venv/bin/medsam-agent trajectories generate --manifest MedSAMAgentLib/data/manifest.jsonl --out "$OUT/gen" \
  --case sam-med2d/s0114_111_aorta_000 --case sam-med2d/amos_0006_90_liver_000 --paradigm both --seed 1 --no-progress
.venv/bin/medsam-agent trajectories export "$OUT/gen/logs" --format llamafactory --out "$OUT/export-first"
mv "$OUT/export-first" "$OUT/export"   # the paths inside are relative: the moved folder still works
echo "== tiny Qwen3-VL ($(date -u +%T))"
PYTHONPATH=Testing/Python $PY -c "
import sys; from pathlib import Path
from tiny_agent_model import save_tiny_agent, call_body
save_tiny_agent(Path(sys.argv[1]), [call_body('stop_action')], dtype='float32')" "$OUT/tiny-qwen3vl"
for variant in lora full; do
  echo "== llamafactory-cli train training/llamafactory/sft_$variant.yaml ($(date -u +%T))"
  nice -n 10 "$LF" train "training/llamafactory/sft_$variant.yaml" \
    model_name_or_path="$OUT/tiny-qwen3vl" dataset_dir="$OUT/export" media_dir="$OUT/export" \
    output_dir="$OUT/$variant" max_steps=2 bf16=false per_device_train_batch_size=1 gradient_accumulation_steps=1 \
    preprocessing_num_workers=1 dataloader_num_workers=0 logging_steps=1 save_steps=1000 plot_loss=false \
    warmup_ratio=0 freeze_vision_tower=false 2>&1 | grep -v "it/s]\|s/it]" | tail -25
  test -f "$OUT/$variant/trainer_state.json" || { echo "no trainer_state.json for $variant" >&2; exit 1; }
  $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], 'steps', s['global_step'], 'losses', [round(e['loss'],4) for e in s['log_history'] if 'loss' in e])" "$OUT/$variant/trainer_state.json" "$variant"
done
echo "== done ($(date -u +%T))"
