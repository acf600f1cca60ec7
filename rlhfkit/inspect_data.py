"""``python -m rlhfkit.inspect_data``: show how a dataset will be read before training on it.

Prints, for each dataset of a mixture, the schema detected, the rows read, kept and dropped (by reason), the
columns ignored and the label counts (unpaired preference, or SFT on labelled rows); then the roles of the prompt
messages over all rows, and the first examples in canonical form. With ``--tokenizer``, the examples are shown as
the scripts will format them, with their token counts: the prompt's (context, not trained on) and the answer's
(the labels trained on). Exit code 2 and a one-line error on bad input, like every script.
"""

from __future__ import annotations

import collections
import json
import sys
from dataclasses import dataclass, field

from rlhfkit.cli import make_parser, setup_logging
from rlhfkit.data import DatasetArguments
from rlhfkit.errors import cli_entry


@dataclass
class InspectArguments:
    kind: str = field(
        default="sft",
        metadata={"help": "What to read the data as.", "choices": ("sft", "preference", "prompt", "unpaired")}
    )
    num_examples: int = field(default=2, metadata={"help": "How many rows to print."})
    tokenizer: str | None = field(default=None, metadata={"help": "Format rows for this tokenizer and count tokens."})


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = make_parser((DatasetArguments, InspectArguments), description=__doc__)
    data_args, args = parser.parse_args_and_config(argv)
    setup_logging()
    from rlhfkit import data, embedded

    name = data_args.dataset_name or embedded.dataset_dir(embedded.ensure())
    subset = data_args.subset
    if data_args.dataset_name is None and subset is None:
        subset = {"sft": "data/finetune", "preference": "data/reward", "prompt": "data/rl",
                  "unpaired": "data/reward"}[args.kind]
    reports: list[dict] = []
    rows = data.load_canonical(name, args.kind, subset, data_args.split, strict=data_args.error_on_invalid_rows,
                               reports=reports)
    roles = collections.Counter(m["role"] for prompt in rows["prompt"] for m in prompt)
    summary = {"dataset": name, "subset": subset, "split": data_args.split, "kind": args.kind, "rows": len(rows),
               "sources": reports, "prompt_roles": dict(roles.most_common())}
    shown = rows.select(range(min(args.num_examples, len(rows))))
    if args.tokenizer:
        from rlhfkit.models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        shown = data.render(shown, args.kind, tokenizer)
        summary["tokens"] = data.token_counts(shown, args.kind, tokenizer)
    json.dump({**summary, "examples": list(shown)}, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
