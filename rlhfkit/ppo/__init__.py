"""Our PPO engine for RLHF (TRL no longer ships one): small modules, each about one thing.

* :mod:`~rlhfkit.ppo.core`: the math as pure functions on tensors (masked statistics, entropy, KL estimators,
  the reward index, GAE, clipped losses), tested against hand-computed numbers;
* :mod:`~rlhfkit.ppo.config`: the command-line arguments of ``ppo.py``;
* :mod:`~rlhfkit.ppo.policy`: the policy with its value head (or a separate critic), the reference, and the
  log-probs and values of a batch of episodes;
* :mod:`~rlhfkit.ppo.trainer`: the loop (rollout, shaping, GAE, PPO epochs), logging and checkpoints.
"""
