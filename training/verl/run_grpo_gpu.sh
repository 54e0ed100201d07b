#!/usr/bin/env bash
# MedSAM-Agent RL stage with verl 0.9.1: multi-turn GRPO of the SFT checkpoint, each tool call running the
# segmentation tool on the case's image (MedSAMAgentLib.training.verl_tools) and the protocol's reward scoring the
# masks the tool made (per-turn IoU/Dice from the rollout; replay through `replay_tool` where they are missing).
#
# NOT RUN HERE: a verl rollout needs GPUs and vLLM/SGLang. What is tested on the CPU (Testing/Python/
# test_training_verl.py, in .venv-verl): the tool classes through verl's tool registry and tool-call parser, and
# the reward through verl's custom-reward loader with these reward kwargs.
#
# Usage: training/verl/run_grpo_gpu.sh EXPORT MODEL [hydra overrides...]
#   EXPORT: a `medsam-agent trajectories export --format verl` folder; MODEL: the SFT checkpoint (Qwen3-VL).
# Environment: scripts/make_trainer_env.sh verl (plus vllm for the GPU, which is not pinned here).
set -euo pipefail
cd "$(dirname "$0")/../.."
EXPORT=${1:?usage: run_grpo_gpu.sh EXPORT MODEL [overrides]}; MODEL=${2:?usage: run_grpo_gpu.sh EXPORT MODEL}
shift 2
PY=${PYTHON:-.venv-verl/bin/python}
"$PY" -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  data.train_files="$EXPORT/medsam_agent_rl.parquet" \
  data.val_files="$EXPORT/medsam_agent_rl.parquet" \
  data.train_batch_size=32 \
  data.max_prompt_length=2048 `# the first turn is ~1,100 tokens (system, tool schemas, 256 image tokens); default 512 cuts it` \
  data.max_response_length=4096 `# up to 6 turns, each tool answer an overlay image (256 tokens) and its text` \
  data.image_key=images \
  data.return_raw_chat=True \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 \
  actor_rollout_ref.actor.use_kl_loss=True \
  actor_rollout_ref.actor.kl_loss_coef=0.01 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.mode=async \
  actor_rollout_ref.rollout.n=8 \
  actor_rollout_ref.rollout.multi_turn.enable=True \
  actor_rollout_ref.rollout.multi_turn.format=hermes \
  actor_rollout_ref.rollout.multi_turn.tool_config_path=training/verl/tool_config.yaml \
  actor_rollout_ref.rollout.multi_turn.max_assistant_turns=6 `# the protocol's 5 actions + stop` \
  actor_rollout_ref.rollout.multi_turn.max_parallel_calls=6 `# every call of a turn runs, as the reward counts them` \
  actor_rollout_ref.rollout.multi_turn.max_tool_response_length=1024 \
  actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent \
  reward.custom_reward_function.path=MedSAMAgentLib/trajectories/verl_reward.py \
  reward.custom_reward_function.name=compute_score \
  +reward.custom_reward_function.reward_kwargs.replay_tool=litemedsam \
  trainer.logger='[console]' \
  trainer.project_name=medsam_agent \
  trainer.experiment_name=grpo_multiturn \
  trainer.n_gpus_per_node="${GPUS:-8}" \
  trainer.nnodes=1 \
  trainer.total_epochs=1 \
  "$@"
