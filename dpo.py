#!/usr/bin/env python
"""Direct Preference Optimization (DPO), the PPO alternative of TRL's and optimum-habana's DPO examples, with TRL's DPOTrainer.

Trains a causal LM directly on preference pairs, from any pair schema the toolkit reads. LoRA is the
default. Under LoRA the reference model is the policy with its adapter disabled, so there is no second
copy of the weights in memory. Full fine-tuning (``--use_peft False``) keeps a reference copy, or with
``--precompute_ref_log_probs`` computes the reference log-probs once before training and frees the copy.
TRL's ``--beta``, ``--loss_type`` (sigmoid, ipo, hinge, ...), ``--max_length`` and the rest of ``DPOConfig``
apply. The held-out pairs are evaluated before and after training; reward accuracy and the chosen-minus-
rejected margin go to ``eval_results.json`` and ``all_results.json``.

    python dpo.py --model_name_or_path ./sft_sanity_merged --dataset_name lvwerra/stack-exchange-paired \\
        --output_dir ./dpo_sanity --beta 0.1 --learning_rate 5e-5 --max_steps 100 \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --bf16 [--use_habana --use_lazy_mode]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlhfkit.cli import make_parser, setup_logging
from rlhfkit.device import DeviceArguments, configure_training_args
from rlhfkit.errors import UserError, cli_entry
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import StaticShapeArguments, TrainerHPUGraphArguments
from rlhfkit.modelargs import ModelArguments
from rlhfkit.pairs import PairDataArguments, load_pairs
from rlhfkit.training import TRAINER_DEFAULTS, prepare_output, train_and_save, will_train

logger = logging.getLogger("dpo")


@dataclass
class ScriptArguments(PairDataArguments, RunArguments, StaticShapeArguments, TrainerHPUGraphArguments):
    pass


def make_dpo_parser():
    from trl import DPOConfig

    return make_parser(
        (ScriptArguments, ModelArguments, DeviceArguments, DPOConfig),
        description=__doc__,
        prepare=lambda ns: configure_training_args(ns, ns),
        defaults=TRAINER_DEFAULTS,
    )


def held_out_metrics(trainer, prefix: str) -> dict:
    """TRL's evaluation metrics (rewards/accuracies, rewards/margins, logps, loss) with ``eval_`` replaced by
    ``prefix``; TRL attaches its reward metrics only under the plain ``eval`` prefix, hence the renaming. Keys
    without the ``eval_`` prefix (``epoch``) are left out: they are not held-out metrics."""
    metrics = trainer.evaluate()
    return {prefix + k[len("eval"):]: v for k, v in metrics.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))}


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from transformers import set_seed

    from rlhfkit import device, hpu, models
    from rlhfkit.results import write_results

    if not training_args.output_dir:
        raise UserError("--output_dir is required: where to write the trained policy")
    info = configure_training_args(training_args, device_args)
    hpu.prepare_trainer_shapes(training_args, script_args)
    set_seed(training_args.seed)
    prepare_output(training_args, script_args)  # a bad --resume_from_checkpoint or --output_dir fails first

    model_name = models.resolve_name(model_args.model_name_or_path)
    models.check_model_source(model_name)
    tokenizer = models.load_tokenizer(model_args.tokenizer_name_or_path or model_name,
                                      training_args.trust_remote_code)
    models.ensure_pad_token(tokenizer)
    train, evaluation = load_pairs(script_args, training_args.seed, tokenizer, training_args.max_length)
    model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                  allow_pickle=model_args.allow_pickle, merge_adapter=True)
    models.check_vocabulary(model, tokenizer, model_name, model_args.tokenizer_name_or_path or model_name)
    peft_config = model_args.lora_config("CAUSAL_LM")
    ref_model = None  # LoRA: the adapter-disabled policy; full: TRL makes a copy (or precomputes log-probs)
    if peft_config is not None and training_args.world_size > 1:
        # Under DDP, PEFT's adapter switch (toggling requires_grad inside the training forward) leaves the
        # adapter's gradients un-averaged: each process trained its own adapter (measured with 2 processes). A
        # frozen reference copy keeps the processes in step, at the cost of one copy of the base weights.
        ref_model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                          allow_pickle=model_args.allow_pickle, merge_adapter=True)
        ref_model.requires_grad_(False).eval()
    if script_args.use_hpu_graphs and peft_config is not None and ref_model is None:
        # the reference pass runs the same module with its adapter switched off: a captured graph would replay
        # the adapter-on computation, and the reference would silently equal the policy
        raise UserError("--use_hpu_graphs with LoRA: DPO's reference pass disables the adapter, which a captured "
                        "HPU graph would not see; use --use_peft False (a separate reference) or drop the flag")
    trainer, shapes = hpu.make_trainer("dpo", info, training_args, script_args, model=model, ref_model=ref_model,
                                       train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
                                       peft_config=peft_config)
    held = models.count_parameters(trainer.model)
    reference = "adapter disabled (no copy)" if trainer.ref_model is None and peft_config else (
        "precomputed log-probs" if trainer.ref_model is None else
        "separate copy" + (" (several processes: see dpo.py)" if ref_model is not None else ""))
    logger.info("policy %s: %d parameters held, %d trainable; reference: %s", model_name, held,
                models.count_parameters(trainer.model, trainable_only=True), reference)

    results = {"device": device.describe(info), "model": model_name, "use_peft": bool(peft_config),
               "reference": reference}
    results.update(held_out_metrics(trainer, "eval_before"))
    if will_train(training_args):
        results.update(train_and_save(trainer, training_args, script_args))
        results.update(shapes.results())
    metrics = held_out_metrics(trainer, "eval")
    write_results(training_args.output_dir, "eval", metrics)
    results.update(metrics)
    write_results(training_args.output_dir, "all", results)
    logger.info("held-out pairs: reward accuracy %.3f, margin %.3f (before training: %.3f, %.3f)",
                results.get("eval_rewards/accuracies", float("nan")), results.get("eval_rewards/margins", float("nan")),
                results.get("eval_before_rewards/accuracies", float("nan")),
                results.get("eval_before_rewards/margins", float("nan")))
    return results


@cli_entry
def cli(argv: list[str] | None = None):
    setup_logging()
    return main(*make_dpo_parser().parse_args_and_config(argv))


if __name__ == "__main__":
    cli()
