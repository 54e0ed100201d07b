"""The training recipe's trainer-side code: the RL environment (``environment``), written once, and its
adapters for TRL (``trl_env``) and verl (``verl_tools``). The SFT stage needs no code here: LLaMA-Factory
reads the ``trajectories export --format llamafactory`` files with the configs in ``training/llamafactory``.
Trainer packages are imported only by the adapters (each trainer has its own environment, see
``scripts/make_trainer_env.sh``)."""
