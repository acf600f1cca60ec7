"""The PPO loop, readable top to bottom: rollout, reward shaping, GAE, PPO epochs; logs and checkpoints.

One PPO step (:meth:`PPOTrainer.step`), following TRL 1.12's experimental PPOTrainer and Huang et al. 2024
("The N+ Implementation Details of RLHF with PPO"); where ours differs, it says so:

1. **Rollout** (no gradients): sample ``batch_size`` responses per process, truncate each after its stop
   token, score prompt + truncated response (reward model or rule), subtract ``missing_eos_penalty`` where
   no stop token came; log-probs and values of the response tokens from the policy (by default in float32
   from what generation computed, the logits and final hidden state each token was sampled from, as TRL
   takes its log-probs from the generation logits; ``--rollout_logprobs forward``: a forward pass after it),
   log-probs from the reference (the LoRA policy with its adapter disabled: no second model, unlike TRL).
2. **Shaping**: optional running normalisation and clipping of scores; per-token reward
   ``-kl_coef * KL_t`` plus the score at the last real token; optional reward whitening.
3. **GAE** (gamma, lambda) over the response; returns = advantages + values; advantages whitened.
4. **Update**: ``ppo_epochs`` passes over the batch in a fresh random order; one optimizer step per
   ``mini_batch_size x gradient_accumulation_steps`` episodes; clipped policy loss + ``vf_coef`` x clipped
   value loss; gradient clipping. With ``--early_stopping`` the passes stop once ``policy/policykl`` (the k1
   estimate ``mean(log p_old - log p)`` of the KL to the rollout policy, averaged over the optimizer step's
   micro-batches and processes) exceeds 1.5 x ``target_kl``: old TRL's rule, on old TRL's estimate (TRL 1.12
   has no early stopping).
5. **KL controller** update (adaptive only), metrics (TRL's names), logs, checkpoint.

Multi-process runs go through accelerate: each process rolls out its own prompts with its own sampling seed
(seed + rank), gradients are averaged, and metrics are averaged over processes. Under DDP every process holds
the whole model; under FSDP2 and DeepSpeed ZeRO-2/3 the policy (with its critic) trains sharded, the frozen
reference sharded for inference (ZeRO-3, FSDP2), and the rollout runs with the parameters gathered once
(:func:`rlhfkit.sharding.gathered`). DeepSpeed steps inside its backward: the accumulation boundary is set
per micro-batch, and a non-finite loss is caught before its backward (the gradients never exist whole).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import time

import torch

from rlhfkit import checkpoints, faults, fused_lora, hpu, lean_decode, sampling, sharding
from rlhfkit.errors import UserError
from rlhfkit.ppo import core
from rlhfkit.ppo.policy import (
    PolicyAndValue,
    SamplingMerge,
    can_merge_for_sampling,
    hidden_size,
    logprobs_and_values,
    merged_for_sampling,
    rollout_logprobs_and_values,
    rollout_logprobs_source,
)
from rlhfkit.results import peak_memory_per_process

logger = logging.getLogger("ppo")

CSV_FIELDS = ("step", "episode", "prompt", "response", "score", "kl", "stopped", "length")
STATE_FILE = "ppo_state.json"
# A policy that has not moved, STILL_STEPS steps in a row: approxkl to the rollout policy below STILL_APPROXKL (0 when
# a step has one optimizer step: its ratio is computed before the update) and its KL from the reference, summed over
# the response, below STILL_KL nats
STILL_APPROXKL, STILL_KL, STILL_STEPS = 1e-6, 1e-3, 5
WEIGHTS_FILE = "trainable.safetensors"
SHARDED_STATE = "sharded"  # FSDP / DeepSpeed: accelerate's save_state, each process writing its own shards


def fused_adamw(device) -> bool:
    """Whether AdamW runs as torch's fused kernel (one pass over each tensor, no temporaries; transformers' Trainer
    defaults to it, ``adamw_torch_fused``): on CPU and CUDA. Elsewhere (Gaudi) torch's loop. Under ZeRO-3 the
    optimizer sees each process's flat float32 partition as one tensor, and the loop's temporaries (``denom``:
    two partition-sized tensors) were the peak of the update: measured in docs/distributed.md."""
    return str(getattr(device, "type", device)) in ("cpu", "cuda")


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def newest_checkpoint(output_dir: str) -> str | None:
    """The newest complete PPO checkpoint in ``output_dir`` (its :data:`STATE_FILE` written)."""
    return checkpoints.newest_complete(output_dir, STATE_FILE)


def mean_over_processes(accelerator, figures: dict, device) -> dict[str, float]:
    """Each figure (a scalar tensor or number) averaged over the processes, in one all-reduce on ``device``:
    NCCL reduces only GPU tensors (the learning rate is a CPU tensor; sending it failed on CUDA), and one
    collective costs less than one per figure."""
    names = list(figures)
    stacked = torch.stack([torch.as_tensor(figures[k]).detach().to(device, torch.float32).reshape(()) for k in names])
    return dict(zip(names, accelerator.reduce(stacked, "mean").tolist(), strict=True))


class PPOTrainer:
    def __init__(self, args, accelerator, module: PolicyAndValue, ref_model, scorer, tokenizer, prompts, queries,
                 stop_ids: list[int], total_steps: int, generator=None, autocast_dtype=None, fuse_lora="auto"):
        self.args, self.accelerator, self.tokenizer = args, accelerator, tokenizer
        # float32 weights with half-precision forward passes (full fine-tuning in bf16: policy.master_dtype)
        self.autocast_dtype = autocast_dtype
        self.prompts, self.queries = prompts, queries  # raw prompts; token ids of the formatted prompts
        self.scorer, self.ref_model, self.stop_ids = scorer, ref_model, stop_ids
        self.total_steps = total_steps
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        from accelerate.utils import DistributedType

        self.split_backward = module.critic is not None and accelerator.distributed_type == DistributedType.NO
        self.device = accelerator.device

        self.layout, self.zero = sharding.describe(accelerator), sharding.zero_stage(accelerator)
        sharding.configure_deepspeed(accelerator, args.mini_batch_size, args.gradient_accumulation_steps,
                                     args.max_grad_norm, hidden_size(module.policy.config))
        if sharding.is_sharded(accelerator) and (changed := module.match_value_head_dtype()):
            logger.info(changed)
        params = [p for p in module.parameters() if p.requires_grad]
        # eps 1e-5: CleanRL's and the N+ details' choice for PPO (torch's 1e-8 lets tiny second moments blow up)
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, eps=1e-5, weight_decay=0.0,
                                      fused=fused_adamw(self.device))
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        self.frozen = []  # frozen models sharded for inference (the reference, a separate reward model)
        if sharding.is_sharded(accelerator):
            self.ref_model = self._shard_frozen(ref_model)
            if getattr(scorer, "model", None) is not None and not getattr(scorer, "adapter_disabled", False):
                scorer.model = self._shard_frozen(scorer.model)
        from transformers import get_scheduler

        updates = total_steps * args.ppo_epochs * (args.batch_size // args.backward_batch_size)
        # stepped by hand once per optimizer step (accelerate's prepared scheduler steps once per process)
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=0,
                                       num_training_steps=updates)
        if args.adaptive_kl:
            self.kl_ctl = core.AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        else:
            self.kl_ctl = core.FixedKLController(args.kl_coef)
        self.moments = core.RunningMoments()
        # --pad_max: every response output_max_length tokens; HPU graphs: a static KV cache as well
        self.gen_config = sampling.generation_config(args.output_max_length, stop_ids, tokenizer.pad_token_id,
                                                     temperature=args.temperature, fixed_length=args.pad_max,
                                                     static_cache=generator is not None)
        self.generator = generator  # the policy as generation sees it (an HPU-graph view on Gaudi), or None
        # LoRA folded into the weights while sampling, when it is faster (float32, unsharded, no HPU graph)
        mergeable = (generator is None and not sharding.is_sharded(accelerator)
                     and can_merge_for_sampling(accelerator.unwrap_model(self.model).policy))
        self.sampling_merge = SamplingMerge(args.merge_adapter_for_generation, mergeable, total_steps)
        # the rollout's log-probs and values: from what generation computed, or a forward pass after it
        policy = accelerator.unwrap_model(self.model).policy
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
        compute_dtype = autocast_dtype or half or next(policy.parameters()).dtype
        self.rollout_source, why = rollout_logprobs_source(
            args.rollout_logprobs, compute_dtype, args.batched_gen, generator is not None,
            gathered=self.zero != 3 or args.ds3_gather_for_generation)
        logger.info("rollout log-probs from %s (%s)", self.rollout_source, why)
        # LoRA layers folded into one matrix product each in the update where that is cheaper, elsewhere PEFT's
        # products in one autograd function (rlhfkit.fused_lora)
        self.fuse_lora, why = fused_lora.resolve_mode(fuse_lora, sharding.is_sharded(accelerator))
        if why:
            logger.info(why)
        self.lora_calls = {"folded": 0, "products": 0, "peft": 0}  # LoRA layer calls in the update, each way
        # rollouts sampled by rlhfkit.lean_decode or by transformers' generate (and why, once); never with sharded
        # parameters (FSDP's and ZeRO-3's hooks gather and release them around module calls) or an HPU graph
        self.lean_blocker = ("sharded parameters" if sharding.is_sharded(accelerator)
                             else "an HPU graph samples" if generator is not None else None)
        if args.lean_decode == "auto" and self.lean_blocker:
            logger.info("--lean_decode auto: off (%s)", self.lean_blocker)
        self.decode_calls = {"lean": 0, "generate": 0}
        self._decode_fallback_logged = False
        self.rollout_shapes: set[tuple[int, int]] = set()  # distinct (episodes, tokens) shapes seen
        self.shuffle = torch.Generator().manual_seed(args.seed + self.rank)
        self.stop, self.bad = faults.StopRequest(), faults.BadBatches(args.max_bad_batches)
        self.step_index, self.episodes_done, self.log_history = 0, 0, []
        self.writer = None
        self._perms: dict[int, torch.Tensor] = {}
        self.describe: dict = {}  # what the run is (critic, learning rate, ...), for all_results.json
        self._still = 0  # consecutive steps in which the policy did not move

    def _shard_frozen(self, model):
        """``model`` sharded for inference as the policy is (:func:`rlhfkit.sharding.prepare_frozen`); returns the
        module to call (a DeepSpeed engine's module: its hooks fetch each layer's partition as it runs)."""
        if model is None:
            return None
        prepared = sharding.prepare_frozen(self.accelerator, model)
        self.frozen.append(prepared)  # keeps a DeepSpeed inference engine alive
        return sharding.unwrap_frozen(prepared)

    # ------------------------------------------------------------------------------------------ data
    def _batch_indices(self, step: int) -> list[int]:
        """Prompt indices of this process for ``step``: a fresh permutation per pass over the prompts, the
        global batch split by rank. A function of the step alone, so a resumed run reads what it would have."""
        n, per_process = len(self.queries), self.args.batch_size
        first = step * per_process * self.world + self.rank * per_process
        out = []
        for position in range(first, first + per_process):
            epoch = position // n
            if epoch not in self._perms:
                self._perms = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch))}
            out.append(int(self._perms[epoch][position % n]))
        return out

    def _collate(self, indices: list[int]):
        width = self.args.input_max_length if self.args.pad_max else None  # longer prompts were dropped at load
        return sampling.left_pad([self.queries[i] for i in indices], self.tokenizer.pad_token_id, self.device, width)

    # --------------------------------------------------------------------------------------- rollout
    def _clock(self) -> float:
        """Wall time after the device's queued work is done (a GPU runs asynchronously), for the time shares."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _average_pair(self, first: float, second: float) -> tuple[float, float]:
        """Two figures averaged over the processes (every process calls it at the same point)."""
        both = self.accelerator.reduce(torch.tensor([first, second], device=self.device), "mean")
        return float(both[0]), float(both[1])

    @torch.no_grad()
    def rollout(self, indices: list[int]):
        """Sample, score and evaluate one batch of episodes; also returns the seconds spent in generation, in the
        policy / value / reference forward passes and in scoring."""
        args, unwrapped = self.args, self.accelerator.unwrap_model(self.model)
        unwrapped.eval()
        queries, query_mask = self._collate(indices)
        started = self._clock()
        # sharded: the policy's (and critic's) parameters gathered once for sampling and its own forward pass, not
        # per layer per token; released before a separate reference and reward model run, so that two full copies
        # are never held together (the adapter-disabled reference or critic is the policy itself: it stays)
        gather = self.zero != 3 or args.ds3_gather_for_generation
        in_policy = self.ref_model is None or getattr(self.scorer, "adapter_disabled", False)
        with self._autocast(), contextlib.ExitStack() as policy_gathered:
            policy_gathered.enter_context(sharding.gathered(self.accelerator, self.model if gather else None))
            merge = self.sampling_merge.now()
            traced = self.rollout_source == "generation"
            with merged_for_sampling(unwrapped.policy, merge):
                sampler = self.generator or unwrapped.policy
                episodes = sampling.sample(sampler, self.tokenizer, [self.prompts[i] for i in indices], queries,
                                           query_mask, self.gen_config, self.stop_ids, args.batched_gen,
                                           trace=traced, lean=self._decode_lean(sampler))
            generated = self._clock()
            decided = self.sampling_merge.record(
                merge, (generated - started) / max(episodes.input_ids.shape[1] - queries.shape[1], 1),
                self._average_pair)
            if decided:
                logger.info(decided)
            self.rollout_shapes.add(tuple(episodes.input_ids.shape))
            # the policy's (critic's) passes in the update's arithmetic, so that the first ratio is 1 exactly
            with fused_lora.fused(unwrapped, self.fuse_lora):
                if traced:  # TRL's PPOTrainer also takes the log-probs from the generation logits
                    logprobs, values = rollout_logprobs_and_values(unwrapped, episodes, args.temperature)
                    episodes.trace = None  # the logits of every step: freed before the next passes
                else:
                    logprobs, values, _ = logprobs_and_values(unwrapped, episodes, args.temperature)
            if not in_policy:
                policy_gathered.close()
            with sharding.gathered(self.accelerator, *self.frozen):
                with unwrapped.reference(self.ref_model) as reference:
                    ref_logprobs = sampling.response_logprobs(reference, episodes, args.temperature)
                forwarded = self._clock()
                scores = self.scorer(episodes.prompts, queries, query_mask, episodes.responses,
                                     episodes.response_mask, episodes.stopped, episodes.response_texts)
        scores = scores.to(self.device).float()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~episodes.stopped).float()
        seconds = {"generation": generated - started, "forward": forwarded - generated,
                   "scoring": self._clock() - forwarded}
        return episodes, logprobs, ref_logprobs, values, scores, seconds

    def _decode_lean(self, sampler) -> bool:
        """Whether this rollout decodes with :mod:`rlhfkit.lean_decode` (``--lean_decode auto``, checked per rollout:
        :func:`rlhfkit.lean_decode.why_not_here` on the policy as it samples); counts each way, says once why not."""
        args = self.args
        why = self.lean_blocker or lean_decode.why_not_here(args.lean_decode, sampler, self.gen_config)
        if why is None and not args.batched_gen:
            why = "--batched_gen False"
        self.decode_calls["generate" if why else "lean"] += 1
        if why and args.lean_decode == "auto" and not self.lean_blocker and not self._decode_fallback_logged:
            logger.info("--lean_decode auto: this rollout samples with transformers' generate (%s)", why)
            self._decode_fallback_logged = True
        return why is None

    # ------------------------------------------------------------------------------------------- step
    def step(self) -> dict:
        args, acc = self.args, self.accelerator
        started = self._clock()
        episodes, logprobs, ref_logprobs, values, scores, phase = self.rollout(self._batch_indices(self.step_index))
        mask = episodes.response_mask.float()

        # 2. shaping: score normalisation / clipping, per-token KL penalty, score at the last real token
        shaped = scores
        if args.normalize_scores:
            self.moments.update(acc.gather(scores))
            shaped = self.moments.normalize(shaped)
        if args.score_clip is not None:
            shaped = shaped.clamp(-args.score_clip, args.score_clip)
        kl_coef = self.kl_ctl.value
        rewards, kl = core.shape_rewards(shaped, logprobs, ref_logprobs, mask, kl_coef, args.kl_estimator)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)

        # 3. GAE on the (unwhitened) values; whitened advantages for the policy loss
        advantages, returns = core.gae(rewards, values, mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask)

        # 4. update
        rollout_seconds = self._clock() - started
        update_stats, early_stopped = self.update(episodes, logprobs, values, advantages, returns)

        # 5. KL controller, metrics
        kl_per_sequence = kl.sum(1)
        mean_kl = acc.reduce(kl_per_sequence.mean(), "mean").item()
        self.kl_ctl.update(mean_kl, args.batch_size * self.world)
        non_score = (-kl_coef * kl).sum(1)
        lengths = episodes.response_mask.sum(1).float()
        local = {
            "objective/kl": kl_per_sequence.mean(),
            "objective/entropy": (-logprobs * mask).sum(1).mean(),
            "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (scores + non_score).mean(),
            "objective/scores": scores.mean(),
            "val/num_eos_tokens": episodes.stopped.float().sum(),
            "val/mean_length": lengths.mean(),
            **update_stats,
        }
        metrics = mean_over_processes(acc, local, self.device)
        metrics["val/num_eos_tokens"] *= self.world  # a count over all processes, not a mean
        self.step_index += 1
        self.episodes_done += args.batch_size * self.world
        seconds = self._clock() - started
        tokens = acc.reduce(lengths.sum(), "sum").item()
        metrics.update({
            "objective/kl_coef": kl_coef,
            "episode": self.episodes_done, "step": self.step_index, "eps": args.batch_size * self.world / seconds,
            "time/rollout": rollout_seconds, "time/update": seconds - rollout_seconds,
            "time/generation": phase["generation"], "time/forward": phase["forward"], "time/scoring": phase["scoring"],
            "tokens_per_second/generation": tokens / max(phase["generation"], 1e-9),
            "policy/early_stopped": float(early_stopped),
        })
        self._record(episodes, scores, kl_per_sequence, metrics)
        self._warn_if_still(metrics)
        return metrics

    def _warn_if_still(self, metrics: dict) -> None:
        """One warning when the update has not moved the policy for STILL_STEPS steps in a row: the learning
        rate is almost always the cause (a LoRA adapter needs a far larger one than the full model)."""
        still = metrics["policy/approxkl"] < STILL_APPROXKL and abs(metrics["objective/kl"]) < STILL_KL
        self._still = self._still + 1 if still else 0
        if self._still == STILL_STEPS:
            from rlhfkit.ppo.config import FULL_LEARNING_RATE, LORA_LEARNING_RATE

            lora = hasattr(self.accelerator.unwrap_model(self.model).policy, "disable_adapter")
            default = LORA_LEARNING_RATE if lora else FULL_LEARNING_RATE
            logger.warning(
                "the policy has not moved in %d steps (policy/approxkl < %g and objective/kl < %g at step %d): "
                "--learning_rate %g is likely too small for %s; raise it (this toolkit's default there is %g)",
                STILL_STEPS, STILL_APPROXKL, STILL_KL, self.step_index, self.args.learning_rate,
                "a LoRA adapter" if lora else "full fine-tuning", default)

    def update(self, episodes, old_logprobs, old_values, advantages, returns):
        """``ppo_epochs`` passes over the rollout in shuffled backward batches, one optimizer step each; with
        ``--early_stopping`` the passes end once ``policy/policykl`` exceeds 1.5 x ``--target_kl`` (old TRL's rule).
        Returns (the mean of the step stats, whether it stopped early)."""
        self.model.train()  # dropout is already off everywhere; train() only for layers that care
        rollout = (episodes, old_logprobs, old_values, advantages, returns)
        sums: dict[str, torch.Tensor] = {}
        count, early_stopped = 0, False
        with fused_lora.fused(self.model, self.fuse_lora) as calls:
            for micro_batches in self._backward_batches():
                step_stats = self._accumulate_gradients(rollout, micro_batches)
                self._optimizer_step(step_stats)
                for k, v in step_stats.items():
                    sums[k] = sums.get(k, 0) + v
                count += 1
                if self._moved_too_far(step_stats):
                    early_stopped = True
                    break
        if not any(self.lora_calls.values()) and any(calls.values()):  # the run's first update: say what it did
            logger.info("update: of %d LoRA layer calls, %d computed with the adapter folded into the weight, %d as "
                        "PEFT's products in one autograd function, %d in PEFT's own forward (--fuse_lora %s)",
                        sum(calls.values()), calls["folded"], calls["products"], calls["peft"], self.fuse_lora)
        for way, n in calls.items():
            self.lora_calls[way] += n
        return {k: v / count for k, v in sums.items()}, early_stopped

    def _backward_batches(self):
        """Per PPO epoch, a fresh shuffle of the rollout, cut into backward batches (``--mini_batch_size x
        --gradient_accumulation_steps`` episodes), each a list of micro-batch index tensors."""
        args = self.args
        backward, micro = args.backward_batch_size, args.mini_batch_size
        for _epoch in range(args.ppo_epochs):
            order = torch.randperm(args.batch_size, generator=self.shuffle).to(self.device)
            for first in range(0, args.batch_size, backward):
                yield [order[start : start + micro] for start in range(first, first + backward, micro)]

    def _accumulate_gradients(self, rollout, micro_batches) -> dict[str, torch.Tensor]:
        """Back-propagate each micro-batch of one backward batch (gradients synchronised on the last); returns
        the batch's stats, each the mean over its micro-batches."""
        args = self.args
        episodes, old_logprobs, old_values, advantages, returns = rollout
        step_stats: dict[str, torch.Tensor] = {}
        self._skipped = False  # DeepSpeed: a non-finite loss skipped this backward batch
        for m, index in enumerate(micro_batches):
            part = episodes.select(index)
            mask = part.response_mask.float()
            last = m == args.gradient_accumulation_steps - 1
            if self.zero is not None:  # DeepSpeed steps inside the backward of the batch's last micro-batch
                self.accelerator.sync_gradients = last
            with self._maybe_no_sync(last):
                pg_loss, pg_stats, vf_loss, vf_stats, logits = self._backward(
                    part, old_logprobs[index], old_values[index], advantages[index], returns[index], mask)
            loss = pg_loss + args.vf_coef * vf_loss
            with torch.no_grad():
                entropy = core.masked_mean(core.entropy_from_logits(logits, args.temperature), mask)
            stats = {"loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach(),
                     "loss/total": loss.detach(), "policy/entropy": entropy,
                     "policy/approxkl": pg_stats["approxkl"], "policy/policykl": pg_stats["policykl"],
                     "policy/clipfrac": pg_stats["clipfrac"],
                     "val/clipfrac": vf_stats["clipfrac"], "val/ratio": pg_stats["ratio"],
                     "val/ratio_var": pg_stats["ratio_var"], "val/error": vf_stats["error"]}
            for k, v in stats.items():
                step_stats[k] = step_stats.get(k, 0) + v / args.gradient_accumulation_steps
            if self._skipped:
                break
        self.accelerator.sync_gradients = True
        return step_stats

    def _optimizer_step(self, step_stats: dict) -> None:
        """Clip the gradients (their norm into ``step_stats``), drop a non-finite batch or stop past
        ``--max_bad_batches``, then step the optimizer and the scheduler."""
        args = self.args
        if self.zero is not None:  # DeepSpeed has clipped and stepped already (or skipped a non-finite batch)
            if self._skipped and self.bad.count_skipped(self.step_index + 1):
                raise faults.diverged(self.bad, newest_checkpoint(args.output_dir))
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            if args.max_grad_norm > 0 and norm is not None:
                step_stats["policy/grad_norm"] = torch.as_tensor(norm).float()
            step_stats["lr"] = torch.tensor(self.scheduler.get_last_lr()[0])
            self.scheduler.step()
            return
        if args.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
            step_stats["policy/grad_norm"] = torch.as_tensor(norm).float()
        # a NaN/inf loss: this batch's gradients are dropped (gradients are all-reduced, or FSDP2's shards summed,
        # so every process decides the same); past --max_bad_batches the run stops before the optimizer sees them
        if self.bad.check(self.model.parameters(), self.step_index + 1):
            raise faults.diverged(self.bad, newest_checkpoint(args.output_dir))
        step_stats["lr"] = torch.tensor(self.scheduler.get_last_lr()[0])  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        hpu.flush_after_optimizer_step()

    def _moved_too_far(self, step_stats: dict) -> bool:
        """``--early_stopping``: the policy's KL to the rollout policy past 1.5 x ``--target_kl``, decided the same
        on every process."""
        if not self.args.early_stopping:
            return False
        policykl = self.accelerator.reduce(step_stats["policy/policykl"].detach(), "mean").item()
        return policykl > 1.5 * self.args.target_kl

    def _backward(self, part, old_logprobs, old_values, advantages, returns, mask):
        """Losses of one micro-batch, back-propagated; the loss is ``policy + vf_coef * value``.

        With a separate critic on one process, the critic's forward and backward run before the policy's, so the
        activations of the two models never coexist: the peak is the larger, not the sum (the critic's and the
        policy's parameters are disjoint, so the gradients are those of the summed loss). DDP's reducer expects
        one forward per backward, and DeepSpeed steps in its backward: there, one pass over both.
        """
        args, acc = self.args, self.accelerator
        scale = 1.0 / args.gradient_accumulation_steps
        if self.zero is not None:
            return self._backward_deepspeed(part, old_logprobs, old_values, advantages, returns, mask, scale)
        if self.split_backward:
            with self._autocast():
                _, values, _ = logprobs_and_values(self.model, part, args.temperature, part="critic")
            vf_loss, vf_stats = core.value_loss(values, old_values, returns, mask, args.cliprange_value)
            acc.backward(args.vf_coef * vf_loss * scale)
            hpu.flush_after_backward()
            with self._autocast():
                logprobs, _, logits = logprobs_and_values(self.model, part, args.temperature, part="policy")
            pg_loss, pg_stats = core.policy_loss(logprobs, old_logprobs, advantages, mask, args.cliprange)
            acc.backward(pg_loss * scale)
        else:
            with self._autocast():  # the forward pass only: backward follows the dtypes autocast chose
                logprobs, values, logits = logprobs_and_values(self.model, part, args.temperature)
            pg_loss, pg_stats = core.policy_loss(logprobs, old_logprobs, advantages, mask, args.cliprange)
            vf_loss, vf_stats = core.value_loss(values, old_values, returns, mask, args.cliprange_value)
            acc.backward((pg_loss + args.vf_coef * vf_loss) * scale)
        hpu.flush_after_backward()  # Gaudi lazy mode: run the forward/backward graph now
        return pg_loss, pg_stats, vf_loss, vf_stats, logits

    def _backward_deepspeed(self, part, old_logprobs, old_values, advantages, returns, mask, scale):
        """:meth:`_backward` under DeepSpeed: one pass over policy and critic; the loss is checked on every process
        first (ZeRO holds the gradients in partitions, and steps inside the backward of the last micro-batch, so
        they cannot be checked after), and a non-finite one is never back-propagated: the rest of its backward
        batch is skipped. The loss is already divided by the accumulation steps (``scale_wrt_gas=False``)."""
        args, acc = self.args, self.accelerator
        logprobs, values, logits = logprobs_and_values(self.model, part, args.temperature)
        pg_loss, pg_stats = core.policy_loss(logprobs, old_logprobs, advantages, mask, args.cliprange)
        vf_loss, vf_stats = core.value_loss(values, old_values, returns, mask, args.cliprange_value)
        loss = pg_loss + args.vf_coef * vf_loss
        bad = acc.reduce((~torch.isfinite(loss.detach())).float(), "sum")
        if bad.item() > 0:
            self._skipped = True
        else:
            acc.backward(loss * scale, scale_wrt_gas=False)
        return pg_loss, pg_stats, vf_loss, vf_stats, logits

    def _autocast(self):
        """Half-precision forward passes over float32 weights when the run asked for it (``autocast_dtype``), else
        nothing. One context over the whole rollout: autocast casts each weight once and reuses the copy for every
        generated token."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _maybe_no_sync(self, sync: bool):
        if sync or self.world == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.model)

    # --------------------------------------------------------------------------------------- logging
    def _record(self, episodes, scores, kl_per_sequence, metrics: dict) -> None:
        """One step's record: the metrics into the history, and on the main process every episode into
        ``training_log.csv``, the metrics into TensorBoard, the progress line and, every ``--sample_every`` steps,
        a table of samples."""
        from accelerate.utils import gather_object

        rows = [
            {"step": self.step_index, "episode": self.episodes_done, "prompt": p, "response": r,
             "score": round(float(s), 6), "kl": round(float(k), 6), "stopped": int(bool(st)), "length": int(n)}
            for p, r, s, k, st, n in zip(episodes.prompts, episodes.response_texts, scores.tolist(),
                                         kl_per_sequence.tolist(), episodes.stopped.tolist(),
                                         episodes.response_mask.sum(1).tolist(), strict=True)
        ]
        rows = gather_object(rows) if self.world > 1 else rows
        self.log_history.append(metrics)
        if not self.accelerator.is_main_process:
            return
        self._append_episodes(rows)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, self.episodes_done)
        step = self.step_index
        if step % self.args.logging_steps == 0 or step == self.total_steps:
            self._log_progress(metrics)
        every = self.args.sample_every
        if every and (step % every == 0 or step == 1):
            self._log_samples(rows[: self.args.num_samples_logged])

    def _append_episodes(self, rows: list[dict]) -> None:
        path = os.path.join(self.args.output_dir, "training_log.csv")
        new = not os.path.exists(path)
        with open(path, "a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _log_progress(self, metrics: dict) -> None:
        """The step's progress line: rate, ETA and the metrics a reader watches."""
        step = self.step_index
        elapsed = time.perf_counter() - self._started
        eta = elapsed / max(step - self._first_step, 1) * (self.total_steps - step)
        logger.info(
            "step %d/%d | %.2f episodes/s | ETA %s | scores %.3f | kl %.3f | rlhf_reward %.3f | approxkl %.4f | "
            "clipfrac %.3f | loss/policy %.4f | loss/value %.4f | eos %d/%d",
            step, self.total_steps, metrics["eps"], _format_duration(eta), metrics["objective/scores"],
            metrics["objective/kl"], metrics["objective/rlhf_reward"], metrics["policy/approxkl"],
            metrics["policy/clipfrac"], metrics["loss/policy"], metrics["loss/value"],
            metrics["val/num_eos_tokens"], self.args.batch_size * self.world,
        )

    def _log_samples(self, shown: list[dict]) -> None:
        """A table of sampled episodes, in the log and (as Markdown) in TensorBoard."""
        table = "\n".join(f"  {r['score']:+.3f} | {r['prompt'][-60:]!r} -> {r['response'][:100]!r}" for r in shown)
        logger.info("samples at step %d (score | prompt -> response):\n%s", self.step_index, table)
        if self.writer is not None:
            markdown = "| score | prompt | response |\n|---|---|---|\n" + "\n".join(
                f"| {r['score']:+.3f} | {_cell(r['prompt'])} | {_cell(r['response'])} |" for r in shown)
            self.writer.add_text("samples", markdown, self.episodes_done)

    # ---------------------------------------------------------------------------------------- the run
    def train(self) -> dict:
        args, acc = self.args, self.accelerator
        if acc.is_main_process and args.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(args.output_dir, "runs"))
        self._started, self._first_step = time.perf_counter(), self.step_index
        if self.step_index >= self.total_steps:
            logger.info("nothing to do: the checkpoint is at step %d of %d", self.step_index, self.total_steps)
        self.stop.install()
        try:
            while self.step_index < self.total_steps:
                self.step()
                if self.stop.requested():  # SIGTERM/SIGINT on any process: checkpoint, then stop everywhere
                    raise faults.stopped_by_signal(self.stop, self.step_index, self.save_checkpoint())
                if args.save_steps and self.step_index % args.save_steps == 0 and self.step_index < self.total_steps:
                    self.save_checkpoint()
        finally:
            self.stop.uninstall()
        runtime = time.perf_counter() - self._started
        if self.writer is not None:
            self.writer.close()
        return self.summary(runtime)

    def summary(self, runtime: float) -> dict:
        history = self.log_history
        done = self.step_index - self._first_step
        episodes = done * self.args.batch_size * self.world
        out = {"train_runtime": runtime, "train_steps": self.step_index, "train_episodes": self.episodes_done,
               "episodes_per_second": episodes / runtime if runtime > 0 else 0.0,
               "rollout_shapes": sorted([list(shape) for shape in self.rollout_shapes]), "distributed": self.layout,
               **peak_memory_per_process(), **self.describe,
               # whether rollouts sampled with the adapter merged (None: not decided, the run was too short) and,
               # when "auto" timed it, the seconds per decoding step of each way
               "sampling_merged": self.sampling_merge.choice, "rollout_logprobs": self.rollout_source,
               # LoRA layer calls of the update computed folded, as one products function, or in PEFT's forward
               # (--fuse_lora)
               "fuse_lora": self.fuse_lora, "lora_update_calls": dict(self.lora_calls),
               # rollouts sampled by the lean Llama decoding loop or by transformers' generate (--lean_decode)
               "lean_decode": self.args.lean_decode, "rollout_decoding": dict(self.decode_calls),
               "sampling_merge_seconds_per_step": {("merged" if k else "unmerged"): v
                                                   for k, v in self.sampling_merge.timed.items()}}
        if history:
            gen = sum(h["time/generation"] for h in history[-done:]) if done else 0.0
            tokens = sum(h["tokens_per_second/generation"] * h["time/generation"] for h in history[-done:])
            out["generated_tokens_per_second"] = tokens / gen if gen else 0.0
            # where a step's time goes: generation, the policy/value/reference forward passes, scoring, update
            recent = history[-done:] if done else []
            total = sum(h["time/rollout"] + h["time/update"] for h in recent)
            for phase in ("generation", "forward", "scoring", "update"):
                spent = sum(h.get(f"time/{phase}", 0.0) for h in recent)
                out[f"time_share/{phase}"] = spent / total if total else 0.0
            tail = history[-max(1, min(5, len(history))):]
            for key in ("objective/scores", "objective/kl", "objective/rlhf_reward", "objective/entropy"):
                out[f"first/{key}"] = history[0][key]
                out[f"final/{key}"] = sum(h[key] for h in tail) / len(tail)
            out["early_stopped_steps"] = int(sum(h["policy/early_stopped"] for h in history))
        return out

    # ----------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> str:
        """``checkpoint-<step>``: trainable weights, optimizer, scheduler, KL controller, score moments, RNG of
        every process, step; written aside and renamed into place, so a half-written one never looks done. Under
        FSDP / DeepSpeed the weights and optimizer states are accelerate's ``save_state`` shards
        (:data:`SHARDED_STATE`), written by every process."""
        from safetensors.torch import save_file

        acc, out = self.accelerator, self.args.output_dir
        final = os.path.join(out, f"checkpoint-{self.step_index}")
        staging = os.path.join(out, f".checkpoint-{self.step_index}.saving")
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        acc.wait_for_everyone()
        torch.save({"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   os.path.join(staging, f"rng_state_{self.rank}.pt"))
        acc.wait_for_everyone()
        sharded = sharding.is_sharded(acc)
        if sharded:  # weights and optimizer states in shards, each process writing its own (a collective)
            acc.save_state(os.path.join(staging, SHARDED_STATE))
            # save_state's last files (each process's random states) come after its collective part: the staging
            # folder is published (renamed) only once every process has written them
            acc.wait_for_everyone()
        if acc.is_main_process:
            if not sharded:
                unwrapped = acc.unwrap_model(self.model)
                save_file(unwrapped.trainable_state(), os.path.join(staging, WEIGHTS_FILE))
                torch.save(self.optimizer.state_dict(), os.path.join(staging, "optimizer.pt"))
            torch.save(self.scheduler.state_dict(), os.path.join(staging, "scheduler.pt"))
            state = {"step": self.step_index, "episode": self.episodes_done, "world_size": self.world,
                     "layout": self.layout,
                     "kl_controller": self.kl_ctl.state_dict(), "score_moments": self.moments.state_dict(),
                     "bad_batches": self.bad.seen,
                     "log_history": self.log_history}
            with open(os.path.join(staging, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1)  # written last: its presence marks a complete checkpoint
            checkpoints.publish(staging, final)
            checkpoints.rotate(self.args.output_dir, self.args.save_total_limit)
            logger.info("saved %s", final)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str) -> None:
        from safetensors.torch import load_file

        state_path = os.path.join(path, STATE_FILE)
        if not os.path.isfile(state_path):
            raise UserError(f"{path} is not a complete PPO checkpoint (no {STATE_FILE}): pick another checkpoint")
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        if state["world_size"] != self.world:
            raise UserError(f"{path} was written by {state['world_size']} process(es), this run has {self.world}: "
                            "resume with the same number of processes")
        written = state.get("layout", "ddp" if self.world > 1 else "single")
        if os.path.isdir(os.path.join(path, SHARDED_STATE)) != sharding.is_sharded(self.accelerator):
            raise UserError(f"{path} was written under {written}, this run is {self.layout}: resume with the same "
                            "accelerate config")
        if sharding.is_sharded(self.accelerator):
            self.accelerator.load_state(os.path.join(path, SHARDED_STATE))
        else:
            self.accelerator.unwrap_model(self.model).load_trainable_state(load_file(os.path.join(path, WEIGHTS_FILE)))
            self.optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True))
        self.scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["score_moments"])
        self.step_index, self.episodes_done = state["step"], state["episode"]
        self.bad.seen = int(state.get("bad_batches", 0))  # --max_bad_batches counts over the whole run
        self.log_history = state["log_history"]
        rng = torch.load(os.path.join(path, f"rng_state_{self.rank}.pt"), weights_only=True)
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        if self.accelerator.is_main_process:
            _truncate_csv(os.path.join(self.args.output_dir, "training_log.csv"), self.step_index)
        logger.info("resumed from %s at step %d (%d episodes)", path, self.step_index, self.episodes_done)


def _truncate_csv(path: str, last_step: int) -> None:
    """Drop log rows written after ``last_step`` (the run died after the checkpoint): they are redone."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= last_step]
    from rlhfkit.io import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


