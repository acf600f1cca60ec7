#!/usr/bin/env python
"""Build the shared inputs of the PPO benchmark (``bench/ppo_vs_trl.py``): a policy, a reward model and a
prompt file, written once into ``<out>/inputs`` and used unchanged by both our ``ppo.py`` and TRL's PPOTrainer.

Settings:

* ``small``: the policy is the real pretrained ``stories260K`` fixture (used in place when its tokenizer pads
  with a token other than EOS, as TRL needs; otherwise a copy with an added pad token is saved). The reward
  model is a ``LlamaForSequenceClassification`` (``num_labels=1``) with the same stories260K trunk and a seeded
  random score head, scaled so that the scores of the prompts have standard deviation 1: a fixed, deterministic
  reward that both sides optimise.
* ``100m``: a Llama of about 100M parameters (hidden 768, 12 layers, 12 heads, MLP 2560) with random weights and
  the stories260K tokenizer; the reward model is the same architecture as a sequence classifier, with other
  random weights. This setting measures memory (model copies dominate), not reward.

Prompts: seeded story openings ("Once upon a time, there was a little cat named Lily."), one JSON object with a
``prompt`` field per line in ``prompts.jsonl`` (what ``ppo.py --dataset_name`` reads). ``prompts_tokenized.jsonl``
holds, per prompt, the text and token ids that ``ppo.py`` itself makes of it (its own ``load_prompts``: the toolkit's
prompt format for a tokenizer without a chat template, ``Question: ...\n\nAnswer:``, and the tokenizer's BOS), so
TRL is fed exactly the same query tokens. ``inputs.json`` describes what was built; a second call with the same
settings reuses it. Runs with the project's interpreter (it imports ``rlhfkit`` and ``ppo``).

    python bench/make_bench_inputs.py --setting small --out .bench/out-small
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures", "models", "stories260K"))
MANIFEST = "inputs.json"
MANIFEST_VERSION = 2

NAMES = ["Lily", "Tom", "Ben", "Mia", "Max", "Sue", "Tim", "Anna", "Sam", "Lucy", "Jack", "Emma", "Leo", "Zoe",
         "Kim", "Bob"]
ANIMALS = ["cat", "dog", "bird", "bunny", "fish", "bear", "frog", "duck", "mouse", "lion", "fox", "owl", "pig",
           "cow", "horse", "sheep"]
ADJECTIVES = ["happy", "small", "brave", "sad", "kind", "silly", "shy", "big"]
PLACES = ["park", "forest", "garden", "beach", "farm", "lake", "house", "school"]
THINGS = ["ball", "box", "toy", "flower", "hat", "stick", "cake", "stone"]
TEMPLATES = [
    "Once upon a time, there was a little {animal} named {name}.",
    "One day, a {adj} {animal} named {name} went to the {place}.",
    "{name} was a {adj} {animal} who lived near the {place}.",
    "Once upon a time, {name} the {animal} found a {thing} in the {place}.",
]

# the 100m setting: about 100M parameters with the stories260K vocabulary (512 tokens)
CONFIG_100M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
               "intermediate_size": 2560, "max_position_embeddings": 512, "tie_word_embeddings": False}


def make_prompts(count: int, seed: int) -> list[str]:
    """``count`` distinct story openings, chosen by a seeded generator (same seed, same list)."""
    rng = random.Random(seed)
    pool = set()
    for template in TEMPLATES:
        for name, animal, adj, place, thing in itertools.product(NAMES, ANIMALS, ADJECTIVES, PLACES, THINGS):
            pool.add(template.format(name=name, animal=animal, adj=adj, place=place, thing=thing))
    ordered = sorted(pool)
    if count > len(ordered):
        raise SystemExit(f"error: at most {len(ordered)} distinct prompts, asked for {count}")
    return rng.sample(ordered, count)


def write_prompts(path: str, prompts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt}) + "\n")


def tokenize_like_ppo(prompts_path: str, tokenizer_name: str) -> tuple[list[str], list[list[int]]]:
    """(formatted query texts, token ids) exactly as ``ppo.py`` builds them from ``prompts_path``."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    import ppo
    from rlhfkit import models
    from rlhfkit.data import DatasetArguments
    from rlhfkit.ppo.config import PPOArguments
    from rlhfkit.sampling import format_prompt

    args = PPOArguments(reward_function="toy")
    tokenizer = ppo.policy_tokenizer(tokenizer_name, False, lambda tok: models.stop_token_ids(args.stop_token, tok))
    texts, ids = ppo.load_prompts(DatasetArguments(dataset_name=prompts_path), args, tokenizer)
    return [format_prompt(tokenizer, text, args.prompt_format) for text in texts], ids


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate_score_head(model, tokenizer, prompts: list[str], seed: int) -> float:
    """Seeded random score direction, scaled so that the prompts' scores have standard deviation 1. Returns the
    scale. The score is read at each prompt's last token (right padding, the attention mask marks the tokens)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(model.score.weight.shape, generator=generator)
    with torch.no_grad():
        model.score.weight.copy_(weight)
        trunk = model.model
        scores = []
        for first in range(0, len(prompts), 64):
            enc = tokenizer(prompts[first:first + 64], return_tensors="pt", padding=True)
            mask = enc["attention_mask"]
            if tokenizer.padding_side == "left":
                last = torch.full((mask.shape[0],), mask.shape[1] - 1)
            else:
                last = mask.sum(1) - 1
            hidden = trunk(input_ids=enc["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
            scores.append(model.score(hidden[torch.arange(len(last)), last]).squeeze(-1))
        std = torch.cat(scores).std().item()
        scale = 1.0 / max(std, 1e-6)
        model.score.weight.mul_(scale)
    return scale


def policy_for_small(out_inputs: str) -> tuple[str, str]:
    """(policy folder, why): the fixture itself when its pad token is not EOS, else a copy with a new pad token."""
    tokenizer = load_tokenizer(FIXTURE)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return FIXTURE, (f"fixture used in place: pad {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) differs "
                         f"from eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id})")
    from transformers import AutoModelForCausalLM

    target = os.path.join(out_inputs, "policy")
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model = AutoModelForCausalLM.from_pretrained(FIXTURE)
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target, f"copy with an added pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})"


def build(setting: str, out: str, seed: int = 0, num_prompts: int = 256, force: bool = False) -> dict:
    """Build (or reuse) the inputs of ``setting`` under ``<out>/inputs``; returns the manifest."""
    out_inputs = os.path.join(os.path.abspath(out), "inputs")
    manifest_path = os.path.join(out_inputs, MANIFEST)
    wanted = {"manifest_version": MANIFEST_VERSION, "setting": setting, "seed": seed, "num_prompts": num_prompts}
    if not force and os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        paths = [manifest.get(k) for k in ("policy", "reward_model", "prompts", "prompts_tokenized")]
        if all(manifest.get(k) == v for k, v in wanted.items()) and all(p and os.path.exists(p) for p in paths):
            print(f"inputs: reusing {manifest_path}", flush=True)
            return manifest
    if not os.path.isdir(FIXTURE):
        raise SystemExit(f"error: the stories260K fixture is missing ({FIXTURE}): the benchmark needs ../shared")

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    shutil.rmtree(out_inputs, ignore_errors=True)
    os.makedirs(out_inputs)
    prompts = make_prompts(num_prompts, seed)
    prompts_path = os.path.join(out_inputs, "prompts.jsonl")
    write_prompts(prompts_path, prompts)
    reward_path = os.path.join(out_inputs, "reward_model")

    if setting == "small":
        policy_path, policy_note = policy_for_small(out_inputs)
        tokenizer = load_tokenizer(policy_path)
        torch.manual_seed(seed)
        reward = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1)
        policy_params = count_parameters(LlamaForCausalLM.from_pretrained(policy_path))
    elif setting == "100m":
        tokenizer = load_tokenizer(FIXTURE)
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise SystemExit("error: the stories260K tokenizer no longer has a distinct pad token")
        shape = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **CONFIG_100M}
        config = LlamaConfig(**shape)
        policy_path = os.path.join(out_inputs, "policy")
        torch.manual_seed(seed)
        policy = LlamaForCausalLM(config)
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
        policy_params = count_parameters(policy)
        policy.save_pretrained(policy_path, safe_serialization=True)
        tokenizer.save_pretrained(policy_path)
        del policy
        policy_note = "random Llama, stories260K tokenizer"
        torch.manual_seed(seed + 1)
        reward = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **shape))
    else:
        raise SystemExit(f"error: unknown setting {setting!r}: small or 100m")

    queries, query_ids = tokenize_like_ppo(prompts_path, policy_path)
    tokenized_path = os.path.join(out_inputs, "prompts_tokenized.jsonl")
    with open(tokenized_path, "w", encoding="utf-8") as handle:
        for query, ids in zip(queries, query_ids, strict=True):
            handle.write(json.dumps({"query": query, "input_ids": ids}) + "\n")

    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.eval()
    scale = calibrate_score_head(reward, tokenizer, queries, seed)
    reward.save_pretrained(reward_path, safe_serialization=True)
    tokenizer.save_pretrained(reward_path)
    manifest = {
        **wanted,
        "policy": policy_path,
        "policy_note": policy_note,
        "policy_parameters": policy_params,
        "reward_model": reward_path,
        "reward_parameters": count_parameters(reward),
        "reward_note": f"sequence classifier, seeded random score head scaled by {scale:.4g} (prompt scores std 1)",
        "prompts": prompts_path,
        "prompts_tokenized": tokenized_path,
        "query_example": queries[0],
        "query_tokens_min_max": [min(map(len, query_ids)), max(map(len, query_ids))],
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    print(f"inputs: built {manifest_path}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=("small", "100m"), required=True)
    parser.add_argument("--out", required=True, help="the benchmark's output folder; inputs go to <out>/inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_prompts", type=int, default=256)
    parser.add_argument("--force", action="store_true", help="rebuild even when matching inputs exist")
    args = parser.parse_args(argv)
    manifest = build(args.setting, args.out, args.seed, args.num_prompts, args.force)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
