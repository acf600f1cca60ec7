"""Training and held-out preference pairs, shared by reward_modeling.py and dpo.py.

Held-out pairs come from ``--eval_split`` (same sub-folder), else the seed layout's ``data/evaluation``
sub-folder where the dataset has it, else ``--eval_subset`` pairs (or 10%) held out from training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rlhfkit.data import DatasetArguments
from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class PairDataArguments(DatasetArguments):
    train_subset: int | None = field(default=None, metadata={"help": "Use at most this many training pairs."})
    eval_subset: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many held-out pairs (default: all, or 10%)."}
    )
    eval_split: str | None = field(default=None, metadata={"help": "Split of held-out pairs (same sub-folder)."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "Sub-folder of held-out pairs; default data/evaluation where it exists."}
    )


def load_pairs(args: PairDataArguments, seed: int):
    """(training pairs, held-out pairs) as canonical preference rows."""
    from rlhfkit import data, defaults

    strict = args.error_on_invalid_rows
    name, subset = defaults.dataset_for("reward", args.dataset_name, args.subset)
    eval_name, eval_dir = defaults.dataset_for("evaluation", args.dataset_name, args.eval_data_dir)
    if args.eval_split:
        evaluation = data.load_canonical(name, "preference", subset, args.eval_split, strict, args.eval_subset)
    elif eval_dir is not None and eval_dir != subset:
        evaluation = data.load_canonical(eval_name, "preference", eval_dir, "train", strict, args.eval_subset)
    else:
        evaluation = None
    limit = args.train_subset
    if evaluation is None and limit is not None:
        limit += args.eval_subset or max(1, limit // 9)
    train = data.load_canonical(name, "preference", subset, args.split, strict, limit)
    if evaluation is None:
        held = args.eval_subset or max(1, len(train) // 10)
        if held >= len(train):
            raise UserError(f"--eval_subset {held} leaves no training pairs ({len(train)} in all): lower it")
        parts = train.train_test_split(test_size=held, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        logger.info("no held-out split: %d pairs held out from training", held)
    if args.train_subset is not None:
        train = train.select(range(min(args.train_subset, len(train))))
    return train, evaluation


def render_pairs(train_rows, eval_rows, tokenizer, max_length: int | None):
    """Render both sets for the tokenizer and drop pairs over ``max_length`` tokens (EOS included)."""
    from rlhfkit import data

    train = data.render(train_rows, "preference", tokenizer)
    evaluation = data.render(eval_rows, "preference", tokenizer)
    if max_length is not None:
        train = data.filter_by_token_length(train, "preference", tokenizer, max_length, "training pairs", add_eos=True)
        evaluation = data.filter_by_token_length(evaluation, "preference", tokenizer, max_length, "held-out pairs",
                                                 add_eos=True)
    logger.info("training pairs: %d, held-out pairs: %d", len(train), len(evaluation))
    return train, evaluation
