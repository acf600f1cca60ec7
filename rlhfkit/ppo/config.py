"""The arguments of ``ppo.py``: optimum-habana's ``examples/trl`` PPO flags, TRL's names, and the PPO knobs.

Batch vocabulary (old TRL's, which optimum-habana's command uses): each PPO step generates ``batch_size`` episodes per
process; the update runs ``ppo_epochs`` passes over them, one optimizer step per
``mini_batch_size * gradient_accumulation_steps`` episodes (``gradient_accumulation_steps`` micro-batches of
``mini_batch_size``). ``steps`` PPO steps in all, or as many as ``total_episodes`` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhfkit import aliases
from rlhfkit.errors import UserError
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import HPUGraphArguments, PadMaxArguments
from rlhfkit.modelargs import FULL_LEARNING_RATE, LORA_LEARNING_RATE
from rlhfkit.ppo.core import KL_ESTIMATORS
from rlhfkit.sampling_args import SamplingArguments
from rlhfkit.sampling_args import default as sampling_default


@dataclass
class PPOArguments(RunArguments, SamplingArguments, PadMaxArguments, HPUGraphArguments):
    """PPO settings; the policy and LoRA flags come from :class:`rlhfkit.modelargs.ModelArguments` (the policy
    may be a full or merged SFT model, or an adapter folder, merged into its base at load: that is the
    reference)."""

    # -------------------------------------------------------------------------------------------- models
    reward_model_name: str | None = field(
        default=None,
        metadata={"help": "Reward model (sequence classifier with a scalar score head, or its adapter folder)."},
    )
    reward_tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "The reward model's tokenizer; default: the one saved with the reward model, else the "
                  "policy's. A different tokenizer is handled by decoding and re-tokenising."},
    )
    reward_function: str | None = field(
        default=None,
        metadata={"help": "A rule instead of a reward model: MODULE:FUNCTION or FILE.py:FUNCTION, called as "
                  "f(prompt, response) -> float. 'toy' is the embedded toy task's gold judge."},
    )
    value_model: str = field(
        default="auto",
        metadata={"help": "reward: the critic starts from the reward model (TRL's, OpenRLHF's and verl's choice, "
                  "the better learner; with LoRA it is the reward model's own weights plus an adapter and a "
                  "trained head, and the adapter-disabled model scores, so no extra copy); head: a value head on "
                  "the policy trunk (the smallest footprint); auto: reward when a reward model that reads the "
                  "policy's token ids is given, else head.", "choices": ("auto", "head", "reward")},
    )
    # ---------------------------------------------------------------------------------------------- data
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})
    input_max_length: int = field(default=256, metadata={"help": "Prompts longer than this (tokens) are dropped."})
    output_max_length: int = field(default=64, metadata={"help": "Tokens to generate at most per response."})
    response_length: int | None = field(default=None, metadata={"help": "TRL's name for --output_max_length."})
    # ----------------------------------------------------------------------------------------- schedule
    output_dir: str = field(default="ppo_output", metadata={"help": "Where the policy, logs and checkpoints go."})
    steps: int | None = field(default=None, metadata={"help": "PPO steps (default: one pass over the prompts)."})
    total_episodes: int | None = field(
        default=None, metadata={"help": "TRL's way to say how long: episodes in all (sets --steps)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Episodes (prompts) per PPO step and process."})
    mini_batch_size: int = field(default=4, metadata={"help": "Episodes per forward/backward in the update."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Mini-batches per optimizer step."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each batch in the update."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": f"AdamW learning rate; default {LORA_LEARNING_RATE} with LoRA, {FULL_LEARNING_RATE} for full "
                  "fine-tuning (measured: see docs/scripts.md, ppo.py)."},
    )
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Learning-rate schedule over the run.",
                                    "choices": ("linear", "constant", "cosine")},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: none)."})
    early_stopping: bool = field(
        default=False,
        metadata={"help": "Stop a step's PPO epochs once the approximate KL between the updated and the rollout "
                  "policy exceeds 1.5 x --target_kl (old TRL's rule)."},
    )
    target_kl: float = field(default=0.1, metadata={"help": "Approximate-KL bound for --early_stopping."})
    # -------------------------------------------------------------------------------------------- rollout
    batched_gen: bool = field(
        default=True,
        metadata={"help": "Generate the whole batch at once (left-padded); False: one prompt at a time."},
    )
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={"help": "DeepSpeed ZeRO-3 (TRL's flag): gather the policy's parameters once for the rollout (one "
                  "full copy per process while it lasts; fast). False: each layer is fetched as it runs, for every "
                  "new token (far slower generation, for a policy whose whole copy does not fit)."},
    )
    merge_adapter_for_generation: str = field(
        default="auto",
        metadata={"help": "LoRA with float32 weights, unsharded: fold the adapter into the base weights while "
                  "sampling and take it back out after (one matrix product per layer and token instead of five "
                  "operations, against two passes over the weights per rollout). 'auto': in runs of 8 steps or more, "
                  "rollouts 2 and 3 are sampled each way and the faster is kept (+29% generation on a 260K-parameter "
                  "model, -22% on "
                  "an 86M one with short rollouts); 'on', 'off'. Each merge rounds the base weights, which are "
                  "also the reference: about 2.7e-6 relative after 1,000 steps.",
                  "choices": ("auto", "on", "off")},
    )
    rollout_logprobs: str = field(
        default="auto",
        metadata={"help": "Where the rollout's log-probs (and the value head's values) come from. 'generation': "
                  "the logits and final hidden states each token was sampled from, kept as generation runs (TRL's "
                  "PPOTrainer takes its log-probs from the generation logits too): one forward pass of the policy "
                  "less per rollout. 'forward': a forward pass over prompt and response after generation. The two "
                  "differ only in the order of floating-point sums (a cached decoding step against the whole "
                  "sequence): in float32 by at most 4e-5 in a log-prob (stories260K with LoRA), more in half "
                  "precision. 'auto': generation when the policy computes in float32, generates the whole batch at "
                  "once and has no HPU graph, else forward. A separate critic (--value_model reward) always runs "
                  "its own forward pass.", "choices": ("auto", "generation", "forward")},
    )
    temperature: float = sampling_default("temperature", 0.7, "Sampling temperature (also used for log-probs).")
    top_k: int = sampling_default("top_k", 0, "Accepted as 0 only (no truncation, as TRL's PPO samples): the ratio "
                                  "and the KL are computed on the full distribution.")
    top_p: float = sampling_default("top_p", 1.0, "Accepted as 1.0 only (no truncation, as TRL's PPO samples): the "
                                    "ratio and the KL are computed on the full distribution.")
    stop_token: str | None = field(
        default="eos",
        metadata={"help": "Responses end after the first stop token: 'eos', any token text, or 'none'."},
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtract this from the score of responses with no stop token."}
    )
    # ------------------------------------------------------------------------------------ rewards and KL
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient (the initial one if adaptive)."})
    kl_estimator: str = field(
        default="k1",
        metadata={"help": "k1: log p - log p_ref; k3: (r - 1) - log r, never negative.", "choices": KL_ESTIMATORS},
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards --kl_target."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL (per sequence) of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive controller."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards (scale only)."})
    normalize_scores: bool = field(
        default=False, metadata={"help": "Normalise scores by their running mean and standard deviation."}
    )
    score_clip: float | None = field(default=None, metadata={"help": "Clip (normalised) scores to +- this."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    # -------------------------------------------------------------------------------- saving and logging
    save_merged: bool = field(
        default=True, metadata={"help": "Save the final LoRA policy merged into a full model (False: the adapter)."}
    )
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N PPO steps (0: only the final save)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint-* folder, or 'last' for the newest in output_dir."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N PPO steps."})
    sample_every: int = field(default=10, metadata={"help": "Log a table of samples every N steps (0: never)."})
    num_samples_logged: int = field(default=4, metadata={"help": "Rows in each sample table."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none.",
                                                            "choices": ("tensorboard", "none")})
    seed: int = field(default=42, metadata={"help": "Random seed (each process adds its rank)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code shipped with checkpoints."})

    def __post_init__(self):
        default = type(self).__dataclass_fields__["output_max_length"].default
        self.output_max_length = aliases.resolve("response_length", self.response_length, self.output_max_length,
                                                 default)

    def validate(self) -> None:
        positive = ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
                    "output_max_length", "input_max_length", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        for name in ("steps", "total_episodes", "max_train_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1")
        if self.batch_size % self.backward_batch_size:
            raise UserError(
                f"--batch_size {self.batch_size} is not a multiple of --mini_batch_size x --gradient_accumulation_steps "
                f"({self.backward_batch_size}): change one of them"
            )
        self.check_sampling(fix=" (PPO samples its responses)")
        if self.top_k != 0 or self.top_p != 1.0:
            raise UserError(f"--top_k {self.top_k} --top_p {self.top_p}: PPO samples from the full distribution at "
                            "--temperature, the one its log-probs, ratio and KL are computed on; truncated sampling "
                            "would make them wrong. Drop --top_k/--top_p (a lower --temperature sharpens sampling)")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError("--learning_rate must be positive")
        if (self.reward_model_name is None) == (self.reward_function is None):
            raise UserError("pass exactly one of --reward_model_name (a reward model) and --reward_function (a rule)")
        if self.value_model == "reward" and self.reward_model_name is None:
            raise UserError("--value_model reward initialises the critic from the reward model: pass --reward_model_name")
        if self.adaptive_kl and self.kl_target <= 0:
            raise UserError("--kl_target must be positive with --adaptive_kl")
        if self.rollout_logprobs == "generation" and not self.batched_gen:
            raise UserError("--rollout_logprobs generation keeps what batched generation computed, --batched_gen False "
                            "generates one prompt at a time: use --rollout_logprobs forward (or auto)")
        if self.pad_max and not self.batched_gen:
            raise UserError("--pad_max pads a batch of prompts to one width, --batched_gen False generates one prompt "
                            "at a time without padding: drop one")
        if self.save_steps < 0 or self.save_total_limit < 1:
            raise UserError("--save_steps must be >= 0 and --save_total_limit >= 1")

    def resolve_learning_rate(self, use_peft: bool) -> str | None:
        """Set --learning_rate to the measured default for LoRA or full fine-tuning when it is not given; returns a
        warning when a given rate is a full fine-tuning one on LoRA adapters (it trains, but slowly)."""
        if self.learning_rate is None:
            self.learning_rate = LORA_LEARNING_RATE if use_peft else FULL_LEARNING_RATE
            return None
        if use_peft and self.learning_rate < LORA_LEARNING_RATE / 3:
            return (f"--learning_rate {self.learning_rate:g} on LoRA adapters is a full fine-tuning rate: LoRA moves "
                    f"the policy far less per step at it (measured in bench/results/*ppo-learning*). Leave "
                    f"--learning_rate unset for the LoRA default {LORA_LEARNING_RATE:g}, or train every weight with "
                    "--use_peft False")
        return None

    @property
    def backward_batch_size(self) -> int:
        """Episodes per optimizer step (per process)."""
        return self.mini_batch_size * self.gradient_accumulation_steps

    def resolve_steps(self, num_prompts: int, num_processes: int) -> int:
        """PPO steps to run: --steps, or enough for --total_episodes, or one pass over the prompts."""
        per_step = self.batch_size * num_processes
        if self.total_episodes is not None:
            steps = math.ceil(self.total_episodes / per_step)
            if self.steps is not None and self.steps != steps:
                raise UserError(
                    f"--total_episodes {self.total_episodes} and --steps {self.steps} disagree "
                    f"({per_step} episodes per step gives {steps} steps): give one of them"
                )
            aliases.say("total_episodes", self.total_episodes, f"{steps} ({per_step} episodes per step)")
            return steps
        if self.steps is not None:
            return self.steps
        return max(1, num_prompts // per_step)
