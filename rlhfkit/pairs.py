"""Training and held-out preference data, shared by reward_modeling.py, dpo.py (pairs) and kto.py (unpaired).

Held-out pairs come from ``--eval_split`` (same sub-folder), else the ``data/evaluation`` sub-folder of stack-exchange-paired's layout
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
    train_subset: int | None = field(
        default=None, metadata={"help": "Use at most this many training pairs (kto.py: examples) that fit --max_length."}
    )
    eval_subset: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many held-out pairs (kto.py: examples; default: all, or 10%)."}
    )
    eval_split: str | None = field(default=None, metadata={"help": "Split of held-out pairs (same sub-folder)."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "Sub-folder of held-out pairs; default data/evaluation where it exists."}
    )


def load_pairs(args: PairDataArguments, seed: int, tokenizer, max_length: int | None, kind: str = "preference"):
    """(training rows, held-out rows) of ``kind`` (preference pairs, or unpaired examples), rendered for
    ``tokenizer``, without rows over ``max_length`` tokens (EOS included). ``--train_subset`` and
    ``--eval_subset`` count rows that fit."""
    from rlhfkit import defaults

    unit = "pairs" if kind == "preference" else "examples"
    strict = args.error_on_invalid_rows
    name, subset = defaults.dataset_for("reward", args.dataset_name, args.subset)
    eval_name, eval_dir = defaults.dataset_for("evaluation", args.dataset_name, args.eval_data_dir)
    fit = {"kind": kind, "tokenizer": tokenizer, "max_length": max_length, "strict": strict}
    if args.eval_split:
        evaluation = _fitting_rows(name, subset, args.eval_split, args.eval_subset, f"held-out {unit}", **fit)
    elif eval_dir is not None and eval_dir != subset:
        evaluation = _fitting_rows(eval_name, eval_dir, "train", args.eval_subset, f"held-out {unit}", **fit)
    else:
        evaluation = None
    wanted = args.train_subset
    if evaluation is None and wanted is not None:
        wanted += args.eval_subset or max(1, wanted // 9)
    train = _fitting_rows(name, subset, args.split, wanted, f"training {unit}", **fit)
    if evaluation is None:
        held = args.eval_subset or max(1, len(train) // 10)
        if held >= len(train):
            raise UserError(f"--eval_subset {held} leaves no training {unit} ({len(train)} in all): lower it")
        parts = train.train_test_split(test_size=held, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        logger.info("no held-out split: %d %s held out from training", held, unit)
    if args.train_subset is not None:
        train = train.select(range(min(args.train_subset, len(train))))
    logger.info("training %s: %d, held-out %s: %d", unit, len(train), unit, len(evaluation))
    return train, evaluation


def _fitting_rows(name, subset, split, wanted: int | None, what: str, kind, tokenizer, max_length, strict):
    """Up to ``wanted`` rendered rows of at most ``max_length`` tokens: more rows are read (4x at a time) until
    that many fit or the data ends."""
    from rlhfkit import data

    limit = wanted
    while True:
        rows = data.load_canonical(name, kind, subset, split, strict, limit)
        rendered = data.render(rows, kind, tokenizer)
        if max_length is None:
            keep = list(range(len(rendered)))
            break
        lengths = data.token_lengths(rendered, kind, tokenizer, add_eos=True)
        keep = [i for i, n in enumerate(lengths) if n <= max_length]
        if wanted is None or len(keep) >= wanted or len(rows) < limit or not keep:
            break  # enough, the data's end, or a --max_length that nothing read so far fits
        limit *= 4
    if not keep:
        raise UserError(f"--max_length {max_length} is shorter than every example in {what} (the shortest has "
                        f"{min(lengths)} tokens): raise --max_length")
    if len(keep) < len(rendered):
        logger.warning("%s: dropped %d of %d rows longer than --max_length %d tokens", what,
                       len(rendered) - len(keep), len(rendered), max_length)
    return rendered.select(keep[:wanted] if wanted is not None else keep)
