"""The policy with its value function, and the frozen reference it is held close to.

Memory is decided by the copies of the model, so we keep as few as the algorithm allows:

* **LoRA policy** (default): the reference is the same model with its adapter disabled (PEFT's
  ``disable_adapter()``), so the base weights exist once (TRL 1.12 does the same when given a
  ``peft_config``; optimum-habana's example loads a second full model).
* **Critic from the reward model** (default whenever a reward model reads the policy's token ids): values
  start as the reward model's scores (TRL 1.12's, OpenRLHF's and verl's arrangement, and the better learner
  in our measurements). With LoRA the critic is the reward model's own weights plus a LoRA adapter and a
  trained copy of its score head; the same model with the adapter disabled is the scorer, as the policy's
  disabled adapter is the reference, so each base exists once. With full fine-tuning it is a trained copy
  (TRL's design: a second reward-model-sized model with gradients and optimizer state).
* **Value head on the policy trunk** (``--value_model head``; the default for rule rewards and for a reward
  model with another tokenizer): one linear layer on the policy's last hidden state; one forward pass gives
  logits and values, the smallest footprint.
* **Full fine-tuning**: the reference is a frozen copy (the only case that needs one).

Dropout is switched off everywhere (Huang et al. 2024: with dropout, log-probs of the rollout and of the
update differ even before any update, and the ratio is no longer 1 at the start).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from rlhfkit.errors import UserError
from rlhfkit.models import backbone, disable_dropout, embedding_rows, score_head, unwrap_peft
from rlhfkit.sampling import Episodes, logprobs_from_logits, position_ids_from_mask

logger = logging.getLogger(__name__)


def hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        return hidden_size(text_config)
    raise UserError(f"cannot find the hidden size of {type(config).__name__}: use --value_model reward")


class PolicyAndValue(nn.Module):
    """One module for the optimizer and for DDP: the policy and its value function.

    ``forward`` returns ``(logits, values)`` for the last ``keep`` positions (the ones that predict response
    tokens), so the vocabulary projection is not paid for the prompt.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        # the layer classes FSDP's transformer auto-wrap shards one unit each (read from a PreTrainedModel)
        self._no_split_modules = sorted({name for model in (policy, critic) if model is not None
                                         for name in (getattr(unwrap_peft(model), "_no_split_modules", None) or [])})
        if critic is None:
            size = hidden_size(policy.config)
            self.value_head = nn.Linear(size, 1, dtype=torch.float32)
            # values start at 0 (lm-human-preferences initialises its value head to zero as well)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        else:
            self.value_head = None

    def match_value_head_dtype(self) -> str | None:
        """Give the value head the dtype of the other trainable weights when they share one and it differs
        (bf16 full fine-tuning): DeepSpeed ZeRO-3 keeps one flat buffer per parameter group and FSDP2 one per unit,
        and each refuses mixed dtypes. DeepSpeed keeps float32 master weights, so the head's updates lose nothing.
        Returns what was done, or None."""
        if self.value_head is None:
            return None
        others = {p.dtype for name, p in self.named_parameters()
                  if p.requires_grad and not name.startswith("value_head.")}
        head = self.value_head.weight.dtype
        if len(others) != 1 or head in others:
            return None
        dtype = others.pop()
        self.value_head.to(dtype)
        name = str(dtype).removeprefix("torch.")
        return (f"value head in {name} like the policy's weights (was {str(head).removeprefix('torch.')}): sharded "
                "training keeps one dtype per buffer")

    def forward(self, input_ids, attention_mask, keep: int, part: str = "both"):
        """(logits, values); ``part="policy"`` or ``"critic"`` runs only that model (a separate critic only) and
        gives None for the other."""
        position_ids = position_ids_from_mask(attention_mask)
        logits = values = None
        if part != "critic":
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              output_hidden_states=self.critic is None, use_cache=False, logits_to_keep=keep)
            logits = out.logits[:, -keep:]
            if self.critic is None:
                values = self.head_values(out.hidden_states[-1][:, -keep:])
        if self.critic is not None and part != "policy":
            critic = unwrap_peft(self.critic)
            hidden = backbone(critic)(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, use_cache=False).last_hidden_state
            values = score_head(critic)(hidden[:, -keep:]).float().squeeze(-1)
        return logits, values

    def head_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T) values of the value head on the trunk's final hidden states (B, T, H)."""
        # float32 unless sharding made the head the policy's dtype (or FSDP computes in bf16); outside autocast,
        # which would run it in bfloat16
        with torch.autocast(hidden.device.type, enabled=False):
            return self.value_head(hidden.to(self.value_head.weight.dtype)).float().squeeze(-1)

    @contextlib.contextmanager
    def reference(self, ref_model: nn.Module | None):
        """The reference policy: ``ref_model`` when given (full fine-tuning), else this policy with its LoRA
        adapter disabled."""
        if ref_model is not None:
            yield ref_model
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters the optimizer updates (what a checkpoint must hold), by name."""
        return {name: p.detach().cpu().clone().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
            raise UserError(
                f"the checkpoint does not match this run's model (missing {missing}, unexpected {extra}): resume "
                "with the same model and LoRA flags"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].dtype))


def can_merge_for_sampling(policy: nn.Module) -> bool:
    """Whether :func:`merged_for_sampling` would merge ``policy``: a LoRA (PEFT) model with float32 weights only."""
    return (hasattr(policy, "merge_adapter") and hasattr(policy, "unmerge_adapter")
            and all(p.dtype == torch.float32 for p in policy.parameters()))


class SamplingMerge:
    """Whether each rollout samples with the adapter merged (:func:`merged_for_sampling`), by ``mode``: "on",
    "off", or "auto": timed on the run itself. Merging pays where the adapter's extra operations per generated
    token cost more than folding it in and out once per rollout: on stories260K (hidden 64) it raised generation
    from 6.9k to 8.9k tokens/s, on an 86M Llama (hidden 768, 8 prompts x 32 tokens) it lowered it from 135-137 to
    106 (bench/results/cpu-2026-12-04-ppo-merged-sampling.md). "auto" samples rollout 1 unmerged (a warm-up, not
    timed), rollout 2 merged, rollout 3 unmerged, compares their seconds per decoding step (averaged over the
    processes, so that all of them choose alike) and keeps the faster for the rest of the run; unmerged on a tie.
    A run of fewer than MIN_STEPS rollouts samples unmerged without a trial: the trial's slower rollout (merged on
    the 86M model: 1.8x the unmerged seconds per step) cannot pay back in it. ``possible`` False (sharded, HPU
    graphs, no float32 LoRA) means never."""

    TRIALS = (None, True, False)  # rollout 1: warm-up (unmerged), 2: merged, 3: unmerged
    MIN_STEPS = 8

    def __init__(self, mode: str, possible: bool, steps: int):
        auto = None if possible and steps >= self.MIN_STEPS else False
        self.choice: bool | None = {"on": possible, "off": False}.get(mode, auto)
        self.rollouts = 0
        self.timed: dict[bool, float] = {}  # merged -> seconds per decoding step of its trial rollout

    def now(self) -> bool:
        """Whether the next rollout samples merged."""
        if self.choice is not None:
            return self.choice
        return bool(self.TRIALS[self.rollouts])

    def record(self, merged: bool, seconds_per_step: float, average) -> str | None:
        """Count a rollout that sampled ``merged`` at ``seconds_per_step``; ``average(merged_s, unmerged_s)`` gives
        the processes' means. Returns what was decided, once, for the log."""
        trial, self.rollouts = self.rollouts, self.rollouts + 1
        if self.choice is not None or self.TRIALS[trial] is None:
            return None
        self.timed[merged] = seconds_per_step
        if len(self.timed) < 2:
            return None
        merged_s, unmerged_s = average(self.timed[True], self.timed[False])
        self.choice = merged_s < unmerged_s
        self.timed = {True: merged_s, False: unmerged_s}
        return (f"sampling with the adapter merged: {merged_s * 1e3:.2f} ms per decoding step, unmerged: "
                f"{unmerged_s * 1e3:.2f} ms; {'merged' if self.choice else 'unmerged'} for the rest of the run "
                "(--merge_adapter_for_generation auto)")


@contextlib.contextmanager
def merged_for_sampling(policy: nn.Module, allowed: bool = True):
    """While inside, a LoRA ``policy``'s adapter is folded into its base weights (PEFT's ``merge_adapter``), so
    each adapted layer runs one matrix product instead of five operations; on the way out it is taken back out
    (``unmerge_adapter``). Yields whether it merged.

    For generation only, where the PPO rollout spends a third of its time: every sampled token runs the whole
    policy, and on a small model the adapter's extra operations cost more than the matrix products. The
    log-probs that PPO's ratio compares are still computed unmerged, in the rollout and in the update alike.
    Only float32 weights are merged. Merging and unmerging round each base weight twice, and the base weights are
    also the reference model (the adapter disabled), so the cycles leave a drift; measured by
    ``bench/merge_drift.py`` on stories260K with LoRA r=16 on every linear layer (largest change of a base weight
    over the largest base weight): float32, 7.6e-8 after 1 cycle and still 7.6e-8 after 3,000 with a fixed adapter;
    with the adapter moving between cycles as training moves it, 1.1e-6 after 100 cycles, 2.7e-6 after 1,000,
    4.4e-6 after 3,000 (a random walk, far below bf16's resolution of 3.9e-3); bf16, 6.4e-3 after 1 cycle and
    0.25 after 1,000: not merged. Nothing is merged either when ``allowed`` is False (:class:`SamplingMerge`'s
    choice: ``--merge_adapter_for_generation``, sharded parameters, HPU graphs) or the policy has no LoRA adapter."""
    if not (allowed and can_merge_for_sampling(policy)):
        yield False
        return
    policy.merge_adapter()
    try:
        yield True
    finally:
        policy.unmerge_adapter()


def logprobs_and_values(model, episodes: Episodes, temperature: float, part: str = "both"):
    """(logprobs, values, logits) of the response tokens under ``model`` (a :class:`PolicyAndValue`, or its DDP
    wrapper); ``part`` as in :meth:`PolicyAndValue.forward` (None for what was not computed). The logits at
    position ``t`` predict token ``t + 1``, so the response tokens are predicted by the last ``T + 1`` positions
    but one."""
    width = episodes.responses.shape[1]
    logits, values = model(episodes.input_ids, episodes.attention_mask, keep=width + 1, part=part)
    logprobs = None
    if logits is not None:
        logits = logits[:, :-1]
        logprobs = logprobs_from_logits(logits, episodes.responses, temperature)
    return logprobs, None if values is None else values[:, :-1], logits


def rollout_logprobs_source(choice: str, compute_dtype: torch.dtype, batched: bool, hpu_graph: bool,
                            gathered: bool) -> tuple[str, str]:
    """("generation" or "forward", why) for ``--rollout_logprobs choice``: where the rollout's log-probs and values
    come from. Generation can only be traced when it calls the policy's own LM head once per token for the whole
    batch, in this process's memory; "auto" also wants float32, where the traced and the recomputed figures
    differ only in the order of floating-point sums."""
    blocker = ("generation replays an HPU graph, which calls no hooks" if hpu_graph
               else "--ds3_gather_for_generation False: DeepSpeed ZeRO-3 fetches each layer as it runs" if not gathered
               else "--batched_gen False generates one prompt at a time" if not batched else None)
    if choice == "forward":
        return "forward", "--rollout_logprobs forward"
    if choice == "generation":
        if blocker:
            raise UserError(f"--rollout_logprobs generation cannot trace this run's generation ({blocker}): use "
                            "--rollout_logprobs forward or auto")
        return "generation", "--rollout_logprobs generation"
    if blocker:
        return "forward", blocker
    if compute_dtype != torch.float32:
        return "forward", (f"the policy computes in {str(compute_dtype).removeprefix('torch.')}, where a cached "
                           "decoding step and a whole-sequence pass differ more than in float32")
    return "generation", "the policy computes in float32"


def rollout_logprobs_and_values(model: PolicyAndValue, episodes: Episodes, temperature: float):
    """(logprobs, values) of the response tokens, as :func:`logprobs_and_values` gives them, from what generation
    computed (``episodes.trace``): the log-probs from the logits each token was sampled from, the values from the
    value head on the final hidden states (a separate critic still runs its own forward pass)."""
    trace = episodes.trace
    logprobs = trace.logprobs(episodes.responses, temperature)
    if model.critic is None:
        return logprobs, model.head_values(trace.hidden_states())
    _, values, _ = logprobs_and_values(model, episodes, temperature, part="critic")
    return logprobs, values


def logits_to_keep_supported(model: nn.Module) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(unwrap_peft(model).forward).parameters


def _fit_vocabulary(model, tokenizer, set_pad: bool = True) -> None:
    """Grow the embeddings when the tokenizer gained tokens (a pad token added for PPO); set the pad id (not for a
    reward model, whose score rule keeps the pad id it was trained with)."""
    if len(tokenizer) > embedding_rows(model):
        logger.info("resizing the embeddings to %d tokens (new pad token)", len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if not set_pad:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def resolve_value_model(choice: str, reward_tokenizer, policy_tokenizer) -> tuple[str, str]:
    """(``head`` or ``reward``, why): ``auto`` is ``reward`` when a reward model (``reward_tokenizer`` not None)
    reads the policy's token ids, else ``head``."""
    from rlhfkit.scoring import same_vocabulary

    if choice == "reward" and reward_tokenizer is not None and not same_vocabulary(reward_tokenizer, policy_tokenizer):
        raise UserError("--value_model reward: the critic reads the policy's token ids, but the reward model has "
                        "another tokenizer; use --value_model head")
    if choice != "auto":
        return choice, f"--value_model {choice}"
    if reward_tokenizer is None:
        return "head", "auto: a rule gives the scores, there is no reward model to start a critic from"
    if not same_vocabulary(reward_tokenizer, policy_tokenizer):
        return "head", "auto: the reward model has another tokenizer, so it cannot read the policy's token ids"
    return "reward", "auto: the critic starts from the reward model"


def master_dtype(dtype, use_peft: bool, deepspeed: bool):
    """The dtype the trained weights are kept in. Full fine-tuning asked for bfloat16 (the default on GPUs, Gaudi
    and AMX CPUs) keeps float32 weights and runs the forward passes under ``torch.autocast`` in bfloat16, as
    transformers' Trainer does with ``--bf16``: bfloat16 weights updated in place lose every update below their
    resolution (8 bits of mantissa: a weight of 0.02 moves in steps of about 1.2e-4, and Adam moves each weight by
    about the learning rate). Measured (ppo.py, stories260K, ``--bf16 True --use_peft False --learning_rate 1e-6``,
    2 steps): 0.27% of the weights changed before this rule, 92% with it. LoRA's adapters are float32
    already (PEFT), and DeepSpeed keeps its own float32 master copy: both keep ``dtype``. float16 keeps it too
    (autocast in float16 needs a loss scaler this engine does not have): :func:`half_precision_warning`."""
    if dtype == torch.bfloat16 and not use_peft and not deepspeed:
        return torch.float32
    return dtype


def half_precision_warning(dtype, learning_rate: float) -> str:
    """The warning for full fine-tuning with float16 weights (see :func:`master_dtype`): the optimizer updates
    those weights themselves, so updates below their resolution round away."""
    name = str(dtype).removeprefix("torch.")
    return (f"full fine-tuning with {name} weights: the optimizer updates the {name} weights themselves (no float32 "
            f"master copy), so updates below their resolution round away (--learning_rate {learning_rate:g}). Pass "
            f"--bf16 True (float32 weights, bfloat16 forward passes) or --fp16 False for float32, train LoRA "
            f"(--use_peft True: float32 adapters), or launch under DeepSpeed (float32 master weights)")


def build(model_args, ppo_args, dtype, tokenizer, reward_model_name: str | None, trained_dtype=None):
    """(PolicyAndValue, reference model or None): the policy loaded (an adapter folder merged into its base),
    LoRA added when ``--use_peft``, the value head or critic, dropout off everywhere. The policy, its frozen
    reference and a critic load in ``trained_dtype`` (default ``dtype``; :func:`master_dtype`)."""
    from rlhfkit import models

    trained_dtype = trained_dtype or dtype
    name = models.resolve_name(model_args.model_name_or_path)
    policy = models.load_causal_lm(name, dtype=trained_dtype, trust_remote_code=ppo_args.trust_remote_code,
                                   allow_pickle=model_args.allow_pickle, merge_adapter=True)
    if not logits_to_keep_supported(policy):
        raise UserError(f"{type(policy).__name__} does not take logits_to_keep: PPO needs a current transformers "
                        "causal LM class")
    _fit_vocabulary(policy, tokenizer)
    ref_model = None
    if model_args.use_peft:
        from peft import get_peft_model

        policy = get_peft_model(policy, model_args.lora_config("CAUSAL_LM"))
    else:
        # in the policy's dtype: under autocast a bfloat16 copy computes otherwise (its residual stream stays
        # bfloat16, the policy's float32) and would start 0.0015 nats a token away from the policy it should equal
        ref_model = models.load_causal_lm(name, dtype=trained_dtype, trust_remote_code=ppo_args.trust_remote_code,
                                          allow_pickle=model_args.allow_pickle, merge_adapter=True)
        _fit_vocabulary(ref_model, tokenizer)
        ref_model.requires_grad_(False)
        ref_model.eval()
        disable_dropout(ref_model)
    critic = None
    if ppo_args.value_model == "reward":
        critic = models.load_sequence_classifier(reward_model_name, dtype=trained_dtype,
                                                 trust_remote_code=ppo_args.trust_remote_code,
                                                 allow_pickle=model_args.allow_pickle)
        score_head(critic), backbone(critic)  # fail early, with the fix, on an unexpected class
        _fit_vocabulary(critic, tokenizer, set_pad=False)  # it reads the policy's token ids, a new pad included
        if model_args.use_peft:
            from peft import get_peft_model

            critic = get_peft_model(critic, model_args.lora_config("SEQ_CLS"))
    module = PolicyAndValue(policy, critic)
    disable_dropout(module)
    return module, ref_model
