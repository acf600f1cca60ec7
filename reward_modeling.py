#!/usr/bin/env python
"""Reward modeling (stage 3 of the pipeline) with TRL's RewardTrainer.

Trains a scalar-score model (``AutoModelForSequenceClassification``, ``num_labels=1``) on preference pairs
from any pair schema the toolkit reads (stack-exchange-paired, UltraFeedback, HH-RLHF, SHP, ...), with the
Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``. LoRA by default, on the transformer plus the
score head, which is trained in full and saved with the adapter (``--use_peft False`` trains everything).
A tokenizer without a pad token (GPT-2 style) pads with EOS, and ``pad_token_id`` goes into the model
config, so the score is read at the last token before padding, the same in training and in use.

Evaluation scores the held-out pairs after training and reports accuracy (chosen above rejected), AUROC,
the mean margin and the score mean/std in ``eval_results.json`` and ``all_results.json``. Held-out pairs
come from ``--eval_split``, else the ``data/evaluation`` sub-folder of stack-exchange-paired's layout, else ``--eval_subset`` rows (or 10%)
held out from training.

optimum-habana's `examples/trl` step 3 works as written:

    python reward_modeling.py --model_name_or_path ./sft_sanity_merged --tokenizer_name_or_path google/gemma-3-270m \\
        --output_dir ./rm_sanity --optim adamw_torch --per_device_train_batch_size 2 \\
        --gradient_accumulation_steps 2 --num_train_epochs 1 --train_subset 500 --eval_subset 100 \\
        --max_length 384 --bf16
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rlhfkit.cli import script_cli
from rlhfkit.device import DeviceArguments
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import HPUGraphArguments, StaticShapeArguments
from rlhfkit.modelargs import ModelArguments
from rlhfkit.pairs import PairDataArguments, load_pairs
from rlhfkit.training import make_trainer, open_run, train_and_save, trainer_parser, will_train

logger = logging.getLogger("reward_modeling")


@dataclass
class ScriptArguments(PairDataArguments, RunArguments, StaticShapeArguments, HPUGraphArguments):
    eval_batch_size: int = field(default=16, metadata={"help": "Pairs per batch when scoring the held-out pairs."})


def make_reward_parser():
    from trl import RewardConfig

    return trainer_parser(ScriptArguments, RewardConfig, __doc__)


def evaluate_pairs(model, tokenizer, rendered, batch_size: int, max_length: int | None) -> dict:
    from rlhfkit import scoring
    from rlhfkit.preference_metrics import pair_metrics

    chosen_texts, rejected_texts = scoring.pair_texts(rendered, tokenizer)
    chosen = scoring.score_texts(model, tokenizer, chosen_texts, batch_size, max_length)
    rejected = scoring.score_texts(model, tokenizer, rejected_texts, batch_size, max_length)
    return {f"eval_{k}": v for k, v in pair_metrics(chosen, rejected).items()}


def main(script_args: ScriptArguments, model_args: ModelArguments, device_args: DeviceArguments, training_args):
    from rlhfkit import device, models
    from rlhfkit.results import write_results

    # the tokenizer gets a pad token: the score is read at the last token before padding
    info, model_name, tokenizer_name, tokenizer = open_run(training_args, device_args, script_args, model_args,
                                                           "the reward model")
    train, evaluation = load_pairs(script_args, training_args.seed, tokenizer, training_args.max_length)

    model = models.load_sequence_classifier(model_name, trust_remote_code=training_args.trust_remote_code,
                                            allow_pickle=model_args.allow_pickle,
                                            pad_token_id=tokenizer.pad_token_id)
    models.check_vocabulary(model, tokenizer, model_name, tokenizer_name)
    peft_config = model_args.lora_config("SEQ_CLS")
    trainer, shapes = make_trainer("reward", info, training_args, script_args, fuse_lora=model_args.fuse_lora,
                                   model=model, train_dataset=train,
                                   eval_dataset=evaluation if training_args.eval_strategy != "no" else None,
                                   processing_class=tokenizer, peft_config=peft_config)
    logger.info("model %s: %d parameters, %d trainable (%s)", model_name, models.count_parameters(trainer.model),
                models.count_parameters(trainer.model, trainable_only=True), "LoRA" if peft_config else "full")

    results = {"device": device.describe(info), "model": model_name, "use_peft": bool(peft_config)}
    if will_train(training_args):
        metrics = train_and_save(trainer, training_args, script_args)
        metrics["train_pairs_per_second"] = metrics.get("train_samples_per_second")  # a sample is one pair
        results.update(metrics)
        results.update(shapes.results())
    metrics = evaluate_pairs(trainer.model, tokenizer, evaluation, script_args.eval_batch_size,
                             training_args.max_length)
    write_results(training_args.output_dir, "eval", metrics)
    results.update(metrics)
    write_results(training_args.output_dir, "all", results)
    logger.info("held-out pairs: accuracy %.3f, AUROC %.3f, mean margin %.3f", metrics["eval_accuracy"],
                metrics["eval_auroc"], metrics["eval_margin_mean"])
    return results


cli = script_cli(make_reward_parser, main)


if __name__ == "__main__":
    cli()
