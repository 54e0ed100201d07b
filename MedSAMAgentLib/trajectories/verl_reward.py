"""verl loads a custom reward function from a file path (``custom_reward_function.path``), outside any package,
so relative imports fail there; point verl at this file (``name: compute_score``) with MedSAMAgent installed.
The reward is ``MedSAMAgentLib.rewards.compute_score`` (see its docstring for what ``extra_info`` must carry)."""

from MedSAMAgentLib.rewards import compute_score, set_replay_tool  # noqa: F401

__all__ = ["compute_score", "set_replay_tool"]
