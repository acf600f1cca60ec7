#!/usr/bin/env python
"""Run TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL release with PPO) from a JSON spec and/or
flags, and write its figures as JSON. The other half of ``bench/ppo_vs_trl.py``; it runs in the benchmark's
own virtualenv (``.bench/trl-1.12``), never in the project's.

    .bench/trl-1.12/bin/python bench/trl_ppo_runner.py --spec .bench/out-small/trl_spec.json

Batch arithmetic (TRL 1.12, one process): ``per_device_train_batch_size x gradient_accumulation_steps`` episodes
per PPO step, split into ``num_mini_batches`` mini-batches; inside a mini-batch, micro-batches of
``per_device_train_batch_size`` go through ``accelerator.accumulate``, which steps the optimizer once per
``gradient_accumulation_steps`` micro-batches. To get exactly one optimizer step per mini-batch (what ``ppo.py
--gradient_accumulation_steps 1`` does) this runner sets ``per_device_train_batch_size = batch_size`` and
``gradient_accumulation_steps = 1``: then a mini-batch is one micro-batch of ``batch_size / num_mini_batches``
episodes and there are ``ppo_epochs x num_mini_batches`` optimizer steps per PPO step. The optimizer steps
actually taken are counted and written out, so the arithmetic is checked, not assumed.

Timing: ``trainer.train()`` only (model loading excluded); generation is timed separately by wrapping TRL's
``batch_generation``, which also counts the generated tokens (up to and including the first EOS, as ``ppo.py``
counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULTS: dict = {
    "policy": None,
    "reward_model": None,
    "value_model": None,  # default: the reward model (TRL's example initialises the critic from it)
    "prompts_tokenized": None,  # JSON lines with an "input_ids" field
    "output_dir": None,
    "result": None,  # where the figures go; default <output_dir>/trl_results.json
    "device": "cpu",
    "batch_size": 32,
    "num_mini_batches": 2,
    "ppo_epochs": 2,
    "steps": 20,
    "response_length": 32,
    "learning_rate": 3e-4,
    "lr_scheduler_type": "constant",
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "temperature": 0.7,
    "missing_eos_penalty": None,
    "seed": 42,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "all-linear",
    "gamma": 1.0,
    "lam": 0.95,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "adam_epsilon": 1e-5,
    "optim": "adamw_torch",
    "use_peft": 1,  # 1: LoRA policy (the matched setting); 0: full fine-tuning, TRL's example default
    "trl_defaults": 0,  # 1: every PPOConfig field not set by the user flags below keeps TRL's own default
    "save_model": None,  # where to save the trained policy (trainer.save_model), for scoring it afterwards
}
# with trl_defaults, the only settings passed to PPOConfig: what a user's command line gives (the run's size and
# task), never a tuned value; learning_rate only when the spec or a flag names it
USER_KEYS = ("batch_size", "ppo_epochs", "steps", "response_length", "kl_coef", "missing_eos_penalty", "seed",
             "learning_rate")
FLOATS = {"learning_rate", "kl_coef", "temperature", "missing_eos_penalty", "lora_dropout", "gamma", "lam",
          "cliprange", "cliprange_value", "vf_coef", "adam_epsilon"}
INTS = {"batch_size", "num_mini_batches", "ppo_epochs", "steps", "response_length", "seed", "lora_r", "lora_alpha",
        "use_peft", "trl_defaults"}
REQUIRED = ("policy", "reward_model", "prompts_tokenized", "output_dir")


def parse_spec(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", help="JSON file of settings (keys as below); flags override it")
    for key in DEFAULTS:
        kind = float if key in FLOATS else int if key in INTS else str
        parser.add_argument(f"--{key}", type=kind, default=None)
    args = parser.parse_args(argv)
    spec, given = dict(DEFAULTS), set()
    if args.spec:
        with open(args.spec, encoding="utf-8") as handle:
            loaded = json.load(handle)
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            parser.error(f"unknown keys in {args.spec}: {unknown}")
        spec.update(loaded)
        given |= set(loaded)
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    spec.update(flags)
    given |= set(flags)
    spec["given"] = sorted(given)
    missing = [k for k in REQUIRED if not spec.get(k)]
    if missing:
        parser.error(f"missing settings: {missing}")
    if not spec["trl_defaults"] and spec["batch_size"] % spec["num_mini_batches"]:
        parser.error("batch_size must be a multiple of num_mini_batches")
    spec["value_model"] = spec["value_model"] or spec["reward_model"]
    spec["result"] = spec["result"] or os.path.join(spec["output_dir"], "trl_results.json")
    return spec


def versions() -> dict:
    from importlib.metadata import version

    out = {}
    for name in ("torch", "trl", "transformers", "accelerate", "peft", "datasets"):
        try:
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported as such, not fatal
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(argv)
    import torch
    import transformers
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    cuda = spec["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but this torch sees no CUDA device")
    transformers.set_seed(spec["seed"])

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("error: TRL's PPOTrainer needs a pad token distinct from EOS (make_bench_inputs.py adds one)")
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(spec["value_model"], num_labels=1, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=dtype)
    with open(spec["prompts_tokenized"], encoding="utf-8") as handle:
        rows = [{"input_ids": json.loads(line)["input_ids"]} for line in handle if line.strip()]
    dataset = Dataset.from_list(rows)

    batch = spec["batch_size"]
    # what a command line must give either way: the run's size and task, and plumbing that changes no result
    run_settings = dict(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_ppo_epochs=spec["ppo_epochs"],
        total_episodes=spec["steps"] * batch,
        response_length=spec["response_length"],
        kl_coef=spec["kl_coef"],
        stop_token="eos",
        missing_eos_penalty=spec["missing_eos_penalty"],
        local_rollout_forward_batch_size=batch,  # the whole batch in one generate call, as ppo.py --batched_gen
        num_sample_generations=0,
        bf16=False,  # TRL's config asks for bf16 by default, which a CPU run must turn off
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not cuda,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=spec["seed"],
    )
    # the matched setting's tuned values; with trl_defaults, TRL's own (learning rate only if the user gave one)
    tuned = dict(num_mini_batches=spec["num_mini_batches"], temperature=spec["temperature"],
                 kl_estimator=spec["kl_estimator"], learning_rate=spec["learning_rate"],
                 lr_scheduler_type=spec["lr_scheduler_type"], adam_epsilon=spec["adam_epsilon"], optim=spec["optim"],
                 weight_decay=0.0, gamma=spec["gamma"], lam=spec["lam"], cliprange=spec["cliprange"],
                 cliprange_value=spec["cliprange_value"], vf_coef=spec["vf_coef"])
    if spec["trl_defaults"]:
        tuned = {"learning_rate": spec["learning_rate"]} if "learning_rate" in spec["given"] else {}
    config = PPOConfig(**run_settings, **tuned)
    peft_config = None
    if spec["use_peft"]:
        peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                                 target_modules=spec["lora_target_modules"], task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         peft_config=peft_config)

    targs = trainer.args
    arithmetic = {k: getattr(targs, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                 "local_batch_size", "batch_size", "num_mini_batches",
                                                 "local_mini_batch_size", "mini_batch_size", "num_ppo_epochs",
                                                 "total_episodes", "num_total_batches", "world_size")}
    expected = {"local_batch_size": batch, "local_mini_batch_size": batch // targs.num_mini_batches,
                "num_total_batches": spec["steps"], "world_size": 1}
    wrong = {k: (arithmetic[k], v) for k, v in expected.items() if arithmetic[k] != v}
    if wrong:
        raise SystemExit(f"error: TRL's batch arithmetic is not what the benchmark asked for: {wrong}")

    optimizer_steps = [0]

    def count_step(*_):
        optimizer_steps[0] += 1

    trainer.optimizer.optimizer.register_step_post_hook(count_step)

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    generation = {"seconds": 0.0, "tokens": 0, "widths": [], "stopped": 0}
    original = ppo_module.batch_generation
    eos = tokenizer.eos_token_id

    def timed_batch_generation(model, queries, *args, **kwargs):
        synchronize()
        started = time.perf_counter()
        query_responses, logits = original(model, queries, *args, **kwargs)
        synchronize()
        generation["seconds"] += time.perf_counter() - started
        responses = query_responses[:, queries.shape[1]:]
        width = responses.shape[1]
        stop = responses == eos
        positions = torch.arange(width, device=responses.device).expand_as(responses)
        first = torch.where(stop, positions, torch.full_like(positions, width)).min(-1).values
        lengths = torch.where(stop.any(-1), first + 1, torch.full_like(first, width))
        generation["tokens"] += int(lengths.sum().item())
        generation["widths"].append(width)
        generation["stopped"] += int(stop.any(-1).sum().item())
        return query_responses, logits

    ppo_module.batch_generation = timed_batch_generation

    policy_model = trainer.model.policy
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters()) + sum(p.numel() for p in reward_model.parameters())
    policy_kind = "LoRA" if spec["use_peft"] else "fully trained"
    print(f"TRL {versions()['trl']} PPO: {arithmetic}, trainable {trainable:,} ({policy_kind} policy + full value model), "
          f"{type(policy_model).__name__}, reference: {'adapter disabled' if trainer.ref_model is None else 'copy'}",
          flush=True)

    synchronize()
    started = time.perf_counter()
    trainer.train()
    synchronize()
    seconds = time.perf_counter() - started

    episodes = int(trainer.state.episode)
    result = {
        "spec": spec,
        "train_seconds": seconds,
        "episodes": episodes,
        "episodes_per_second": episodes / seconds,
        "generation_seconds": generation["seconds"],
        "generated_tokens": generation["tokens"],
        "generated_tokens_per_second": generation["tokens"] / max(generation["seconds"], 1e-9),
        "generation_widths": generation["widths"],
        "episodes_with_eos": generation["stopped"],
        "optimizer_steps": optimizer_steps[0],
        "optimizer_steps_expected": spec["steps"] * spec["ppo_epochs"] * targs.num_mini_batches,
        "config": {k: getattr(targs, k) for k in ("learning_rate", "lr_scheduler_type", "num_mini_batches",
                                                  "adam_epsilon", "vf_coef", "cliprange", "temperature")},
        "batch_arithmetic": arithmetic,
        "reference_model": "adapter disabled" if trainer.ref_model is None else "separate copy",
        "trainable_parameters": trainable,
        "parameters_in_memory": total,
        "log_history": [h for h in trainer.state.log_history if "objective/scores" in h],
        "cuda_max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    if spec["save_model"]:
        trainer.save_model(spec["save_model"])
    os.makedirs(os.path.dirname(os.path.abspath(spec["result"])), exist_ok=True)
    with open(spec["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    print(f"TRL PPO: {episodes} episodes in {seconds:.1f} s ({episodes / seconds:.2f} episodes/s), "
          f"{optimizer_steps[0]} optimizer steps; figures in {spec['result']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
