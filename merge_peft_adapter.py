#!/usr/bin/env python
"""Merge a LoRA adapter into its base model and save a plain checkpoint (stages 2 and 4 of the pipeline).

The adapter's task type decides the model class: a causal-LM adapter merges into ``AutoModelForCausalLM``;
a sequence-classification adapter (a reward model) merges into ``AutoModelForSequenceClassification`` with
``num_labels=1``, keeping the *trained* score head (saved by PEFT as a module to save) and writing
``pad_token_id`` into the config so the merged reward model reads the score at the last real token. The
known upstream failure, a head silently re-initialised at random, is checked for: the merged score head
must equal the adapter's.

If the adapter records a different base model than ``--base_model_name`` (optimum-habana's reward-adapter merge step merges a reward
adapter trained on the SFT-merged model onto the raw base), a loud warning names both; an adapter whose
shapes do not fit the base is refused. The output is written to a staging folder and renamed into place.

    python merge_peft_adapter.py --base_model_name google/gemma-3-270m --adapter_model_name ./sft_sanity \\
        --output_name ./sft_sanity_merged
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from rlhfkit.cli import make_parser, script_cli
from rlhfkit.errors import UserError

logger = logging.getLogger("merge_peft_adapter")


@dataclass
class MergeArguments:
    adapter_model_name: str = field(metadata={"help": "Folder of the PEFT adapter (adapter_config.json)."})
    output_name: str = field(metadata={"help": "Folder to write the merged model and tokenizer to."})
    base_model_name: str | None = field(
        default=None, metadata={"help": "Base model to merge into; default: the base the adapter records."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace --output_name if it exists (swapped in only once complete)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code shipped with the checkpoint."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights."})


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (local paths compared resolved)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def read_adapter_config(path: str) -> dict:
    config_file = os.path.join(path, "adapter_config.json")
    if not os.path.isdir(path):
        raise UserError(f"--adapter_model_name {path} is not a folder: pass the folder a LoRA run saved")
    if not os.path.isfile(config_file):
        raise UserError(f"{path} is not a PEFT adapter (no adapter_config.json): pass the folder a LoRA run saved")
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def load_with_adapter(args: MergeArguments, base: str, task_type: str):
    """(the model with the adapter on it, unmerged, and the tokenizer), through rlhfkit.models' loaders."""
    from rlhfkit import models

    tokenizer_source = args.adapter_model_name if os.path.isfile(
        os.path.join(args.adapter_model_name, "tokenizer_config.json")) else base
    tokenizer = models.load_tokenizer(tokenizer_source, args.trust_remote_code)
    options = {"base": base, "trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
    if task_type == "SEQ_CLS":
        models.ensure_pad_token(tokenizer)  # the score is read at the last non-pad token
        model = models.load_sequence_classifier(args.adapter_model_name, pad_token_id=tokenizer.pad_token_id,
                                                merge_adapter=False, **options)
    else:
        model = models.load_causal_lm(args.adapter_model_name, **options)
    return model, tokenizer


def trained_head_weight(model):
    """A copy of the trained score-head weight of a sequence classifier with its adapter (PEFT keeps the trained
    head as ``modules_to_save``)."""
    from rlhfkit import models

    head = models.score_head(models.unwrap_peft(model))
    head = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
    return head.weight.detach().clone()


def main(args: MergeArguments):
    import torch

    from rlhfkit import faults, io, models

    adapter_config = read_adapter_config(args.adapter_model_name)
    recorded = adapter_config.get("base_model_name_or_path")
    base = args.base_model_name or recorded
    if not base:
        raise UserError(f"adapter {args.adapter_model_name} records no base model: pass --base_model_name")
    if recorded and args.base_model_name and not same_model(recorded, args.base_model_name):
        logger.warning(
            "!!! adapter %s was trained on base '%s', but is being merged into '%s'. The result is only "
            "meaningful if the two share the weights the adapter was trained against; merge into '%s' "
            "unless this is intended !!!", args.adapter_model_name, recorded, args.base_model_name, recorded,
        )
    faults.check_output_dir(args.output_name, args.overwrite_output_dir, None, flag="--output_name")
    task_type = adapter_config.get("task_type") or "CAUSAL_LM"
    logger.info("merging %s adapter %s into %s", task_type, args.adapter_model_name, base)
    peft_model, tokenizer = load_with_adapter(args, base, task_type)
    trained_weight = trained_head_weight(peft_model) if task_type == "SEQ_CLS" else None
    merged = peft_model.merge_and_unload()
    if trained_weight is not None and not torch.equal(models.score_head(merged).weight, trained_weight):
        raise RuntimeError("the merged score head differs from the adapter's trained head")

    output = os.path.abspath(args.output_name)
    with io.new_dir(output, replace=True) as staging:  # --overwrite_output_dir: the old folder is swapped out
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        io.write_json(os.path.join(staging, "merge_info.json"), {
            "adapter": os.path.abspath(args.adapter_model_name), "base": base,
            "adapter_recorded_base": recorded, "task_type": task_type,
        })
    logger.info("merged model written to %s", args.output_name)
    return output


def build_parser():
    return make_parser((MergeArguments,), description=__doc__)


cli = script_cli(build_parser, main)


if __name__ == "__main__":
    cli()
