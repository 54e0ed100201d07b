"""From trajectories to training data (AGENT_PROTOCOL.md, "Expert trajectories" and "Reward").

- ``generate``: oracle-expert episodes (hybrid prompting with the progress constraint and a stop action) run
  as ``Session``s, so they are logged in the same JSONL format as a clinician's sessions in Slicer;
- ``export``: logs (generated or clinical) -> LLaMA-Factory ShareGPT multimodal JSON (SFT) or verl parquet (RL);
- ``stats``: what a set of logs holds, printed and plotted.

The reward itself lives in ``MedSAMAgentLib.rewards``.
"""
