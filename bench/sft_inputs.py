"""Inputs of the SFT / reward-modeling / DPO / generation benchmarks, built offline: a Llama model of a given size
from a config (random weights, the embedded tokenizer) and prompt/completion and preference files rendered
exactly as ``sft.py`` / ``reward_modeling.py`` feed TRL, so that every side trains on the same token ids.

The model sizes (``SIZES``): ``tiny`` for the smoke test, ``40m`` for CPU (the suite's MFU target), ``350m``
for a GPU (a few hundred million parameters). Rows are the embedded toy task; ``long`` rows join several
toy exchanges into one completion (about 200-1000 tokens, varying) so that a GPU gets enough tokens per step.
"""

from __future__ import annotations

import json
import os
import random

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    # name: Llama shape (vocab: the embedded tokenizer's 1,024 tokens)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "40m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12),
    "350m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
}


def _ensure_repo_path() -> None:
    import sys

    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def build_model(size: str, out: str, seed: int = 0) -> dict:
    """A random Llama of ``size`` with the embedded tokenizer in ``out`` (safetensors); returns its facts."""
    _ensure_repo_path()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhfkit import embedded

    tokenizer = AutoTokenizer.from_pretrained(embedded.model_dir(embedded.ensure()))
    shape = SIZES[size]
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         num_key_value_heads=shape["num_attention_heads"], bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    return {"path": out, "size": size, "parameters": sum(p.numel() for p in model.parameters()),
            "matmul_parameters": matmul_parameters(model), "config": shape}


def matmul_parameters(model) -> int:
    """Parameters that take part in a matrix product per token: all but the input embedding (a lookup). This is
    the N of the 6 x N x tokens/s FLOP estimate (Kaplan et al. 2020 count non-embedding parameters; the output
    projection is a real matrix product, so it is counted)."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)


def _toy_rows(seed: int):
    _ensure_repo_path()
    from rlhfkit import embedded

    path = os.path.join(embedded.dataset_dir(embedded.ensure(seed)), "data", "finetune", "train.jsonl")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def render(question: str, answer: str) -> tuple[str, str]:
    """The toolkit's plain-text format for a tokenizer without a chat template (rlhfkit.schemas)."""
    _ensure_repo_path()
    from rlhfkit import schemas

    row = schemas.render_row({"prompt": [{"role": "user", "content": question}], "completion": answer}, "sft", False)
    return row["prompt"], row["completion"]


def write_sft_data(out: str, rows: int, long: bool, seed: int = 0, eval_rows: int = 64) -> dict:
    """The same rows twice, one folder each (``load_dataset`` takes a folder of ``train.jsonl``):
    ``sft_ours`` as prompt / response (the toolkit renders it) and ``sft_trl`` already rendered as TRL's
    prompt / completion, so both sides train on the same token ids; plus ``sft_eval.jsonl`` (held out,
    rendered)."""
    source = _toy_rows(seed)
    rng = random.Random(seed)
    rng.shuffle(source)
    made = []
    position = 0
    for _ in range(rows + eval_rows):
        if long:  # several exchanges in one completion: 4-24 of them, so lengths vary as real data does
            count = rng.randint(4, 24)
            parts = [source[(position + k) % len(source)] for k in range(count)]
            position += count
            question = parts[0]["question"]
            answer = " ".join([parts[0]["response_j"]] + [f"{p['question']} {p['response_j']}" for p in parts[1:]])
        else:
            part = source[position % len(source)]
            position += 1
            question, answer = part["question"], part["response_j"]
        made.append((question, answer))
    paths = {"ours": os.path.join(out, "sft_ours"), "trl": os.path.join(out, "sft_trl"),
             "eval": os.path.join(out, "sft_eval.jsonl")}
    files = {"ours": [{"prompt": q, "response": a} for q, a in made[:rows]],
             "trl": [dict(zip(("prompt", "completion"), render(q, a), strict=True)) for q, a in made[:rows]],
             "eval": [dict(zip(("prompt", "completion"), render(q, a), strict=True)) for q, a in made[rows:]]}
    for name, chunk in files.items():
        path = paths[name] if name == "eval" else os.path.join(paths[name], "train.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for row in chunk:
                handle.write(json.dumps(row) + "\n")
    return paths


def write_pairs(out: str, rows: int, seed: int = 0) -> str:
    """``pairs.jsonl``: the toy preference pairs (question / response_j / response_k, stack-exchange-paired's layout)."""
    source = _toy_rows(seed)
    path = os.path.join(out, "pairs.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for row in source[:rows]:
            handle.write(json.dumps({k: row[k] for k in ("question", "response_j", "response_k")}) + "\n")
    return path
