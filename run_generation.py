#!/usr/bin/env python
"""Generate text from a model (stage 6 of the pipeline): a merged model, a full checkpoint or an adapter folder.

Prompts come from ``--prompt`` (repeatable) and/or ``--prompt_file`` (a .txt file, one prompt per line, or a
.jsonl/.json file in any prompt schema the toolkit reads). Prompts are formatted as in training: the chat
template when the tokenizer has one, else optimum-habana's ``Question: ...\\n\\nAnswer:`` (``--prompt_format raw``
passes the text as it is, for base models). Batches are left-padded with attention masks, so batched greedy decoding equals
one prompt at a time. Results go to stdout and, with ``--output_file``, to a jsonl file; a tokens/s line ends
the run.

    python run_generation.py --model_name_or_path ./ppo_sanity --prompt "What is the currency of the USA?" \\
        --bf16 --use_kv_cache --max_new_tokens 64 --batch_size 1
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

from rlhfkit.cli import make_parser, script_cli
from rlhfkit.device import DeviceArguments, PrecisionArguments
from rlhfkit.errors import UserError
from rlhfkit.hpu import HPUGraphArguments
from rlhfkit.sampling_args import DecodingArguments
from rlhfkit.sampling_args import default as sampling_default

logger = logging.getLogger("run_generation")


@dataclass
class GenerationArguments(DecodingArguments):
    """The sampling flags (rlhfkit.sampling_args) with generate's defaults: greedy; temperature 1.0 when sampling."""

    do_sample: bool = sampling_default("do_sample", False)
    temperature: float = sampling_default("temperature", 1.0, "Sampling temperature (with --do_sample).")
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model folder, adapter folder or hub id; default: the embedded tiny Llama."}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: the model's tokenizer."})
    prompt: list[str] | None = field(
        default=None, metadata={"help": "A prompt (repeat the flag, or give several after it).", "action": "extend"}
    )
    prompt_file: str | None = field(default=None, metadata={"help": "A .txt (one per line) or .jsonl/.json file."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per batch."})
    use_kv_cache: bool = field(default=True, metadata={"help": "Reuse attention keys/values while decoding."})
    num_return_sequences: int = field(default=1, metadata={"help": "Completions per prompt."})
    seed: int = field(default=42, metadata={"help": "Random seed for sampling."})
    output_file: str | None = field(default=None, metadata={"help": "Also write results as jsonl here."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code shipped with the checkpoint."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights."})


def read_prompt_file(path: str) -> list:
    """Prompts from a .txt file (one per non-empty line) or a json/jsonl file in any prompt schema."""
    if not os.path.isfile(path):
        raise UserError(f"--prompt_file {path} does not exist")
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as handle:
            prompts = [line.rstrip("\n") for line in handle if line.strip()]
    else:
        from rlhfkit import data

        prompts = [row["prompt"] for row in data.load_canonical(path, "prompt")]
    if not prompts:
        raise UserError(f"--prompt_file {path} holds no prompts")
    return prompts


def validate(args: GenerationArguments) -> None:
    if not args.prompt and not args.prompt_file:
        raise UserError("no prompts: pass --prompt TEXT (repeatable) or --prompt_file FILE")
    for name in ("max_new_tokens", "batch_size", "num_return_sequences"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    args.check_sampling(args.do_sample, " (or drop --do_sample for greedy decoding)")
    if not args.do_sample and args.num_return_sequences > 1:
        raise UserError("--num_return_sequences > 1 needs --do_sample (greedy decoding gives one answer)")


def main(args: GenerationArguments, device_args: DeviceArguments, precision: PrecisionArguments,
         graphs: HPUGraphArguments | None = None):
    validate(args)
    from transformers import set_seed

    from rlhfkit import hpu, models, sampling

    graphs = graphs or HPUGraphArguments()
    info, dtype, static = hpu.inference_setup(device_args, precision, graphs)
    if static and not args.use_kv_cache:
        raise UserError("--use_hpu_graphs decodes with a static KV cache: drop --use_kv_cache False")
    prompts = list(args.prompt or []) + (read_prompt_file(args.prompt_file) if args.prompt_file else [])

    name = models.resolve_name(args.model_name_or_path)
    tokenizer = models.load_tokenizer(args.tokenizer_name_or_path or name, args.trust_remote_code)
    model = models.load_causal_lm(name, dtype=dtype, trust_remote_code=args.trust_remote_code,
                                  allow_pickle=args.allow_pickle, merge_adapter=True)
    model.to(info.torch_device)
    model = hpu.wrap_for_inference(model, info, graphs.use_hpu_graphs,
                                   "generation (static KV cache, prompts left-padded to the longest)")
    set_seed(args.seed)
    logger.info("generating for %d prompt(s) on %s (%s)", len(prompts), info.type, str(dtype).replace("torch.", ""))
    result = sampling.generate_text(
        model, tokenizer, prompts, args.prompt_format, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        num_return_sequences=args.num_return_sequences, use_cache=args.use_kv_cache,
        progress=lambda done: logger.info("%d/%d prompts done", done, len(prompts)), static_shapes=static,
        lean_decode=args.lean_decode,
    )
    records = [
        {"prompt": prompt, "formatted_prompt": text, "completions": completions}
        for prompt, text, completions in zip(prompts, result.prompts, result.completions, strict=True)
    ]
    for record in records:
        print(f"### prompt: {record['prompt'] if isinstance(record['prompt'], str) else json.dumps(record['prompt'])}")
        for completion in record["completions"]:
            print(completion)
        print()
    sys.stdout.flush()
    if args.output_file:
        from rlhfkit.io import write_text

        write_text(args.output_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    logger.info("%d new tokens in %.2fs: %.1f tokens/s", result.new_tokens, result.seconds, result.tokens_per_second)
    return records


def build_parser():
    return make_parser((GenerationArguments, DeviceArguments, PrecisionArguments, HPUGraphArguments),
                       description=__doc__)


cli = script_cli(build_parser, main)


if __name__ == "__main__":
    cli()
