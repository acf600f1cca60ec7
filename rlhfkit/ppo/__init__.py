"""Our PPO engine for RLHF (TRL no longer ships one): small modules, each about one thing.

* :mod:`~rlhfkit.ppo.core`: the math as pure functions on tensors (masked statistics, KL estimators, GAE,
  clipped losses, stop-token truncation, the reward index), tested against hand-computed numbers;
* :mod:`~rlhfkit.ppo.config`: the command-line arguments of ``ppo.py``;
* :mod:`~rlhfkit.ppo.policy`: the policy with its value head (or a separate critic) and the reference;
* :mod:`~rlhfkit.ppo.scoring`: the reward model, with its own tokenizer when it has one;
* :mod:`~rlhfkit.ppo.rollout`: generation, truncation, log-probs, values and rewards of one batch;
* :mod:`~rlhfkit.ppo.trainer`: the loop (rollout, shaping, GAE, PPO epochs), logging and checkpoints.
"""
