"""sft.py end to end on the embedded default: LoRA and full fine-tuning, --config, --do_eval, refused input.

Each training run is a module-scoped fixture (a subprocess, as a user runs it), so several tests read the
same outputs. The one long run (300 LoRA steps, ~35 s) is checked against the toy task's gold judge: the
SFT model's sampled answers must score clearly better than the base model's.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, assert_user_error, read_json, run_script

SFT = str(REPO / "sft.py")
LORA_MODULES = ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj"]
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True"]
GOLD_QUESTIONS = 100
GOLD_SAMPLES = 4
GOLD_MARGIN = 0.1  # measured: base -0.30, SFT -0.09 (400 samples each, std of a mean ~0.03)
MODEL_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _mean_gold(model, tokenizer, questions: list[str]) -> float:
    """Temperature 1, GOLD_SAMPLES answers per question, seed 0 (rlhfkit.toy.sampled_gold)."""
    from rlhfkit import toy

    return toy.sampled_gold(model, tokenizer, questions, samples=GOLD_SAMPLES)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lora_run(embedded_root, tmp_path_factory):
    """The measured LoRA run on the embedded default (no model or dataset flags): 300 steps."""
    out = tmp_path_factory.mktemp("sft-lora") / "sft"
    result = run_script(
        SFT, "--output_dir", str(out), "--do_train", "--max_steps", "300", "--per_device_train_batch_size", "16",
        "--learning_rate", "2e-3", *LORA_MODULES, *QUIET,
    )
    return result, out


@pytest.fixture(scope="module")
def full_run(embedded_root, tmp_path_factory):
    """Full fine-tuning, 20 steps, with --do_eval on 50 held-out rows."""
    out = tmp_path_factory.mktemp("sft-full") / "full"
    result = run_script(
        SFT, "--output_dir", str(out), "--use_peft", "False", "--do_train", "--do_eval", "--size_valid_set", "50",
        "--max_steps", "20", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", *QUIET,
    )
    return result, out


CONFIG_SETTINGS = {
    "do_train": True,
    "max_steps": 5,
    "per_device_train_batch_size": 4,
    "learning_rate": 0.002,
    "seed": 1234,
    "lora_r": 4,
    "lora_target_modules": ["q_proj", "v_proj"],
    "save_strategy": "no",
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def flag_and_config_runs(embedded_root, tmp_path_factory):
    """The same short LoRA run three times (in parallel): from flags, from a YAML --config file (both with the
    default ``--fuse_lora auto``), and from flags with ``--fuse_lora off`` (PEFT's own forward)."""
    import yaml

    folder = tmp_path_factory.mktemp("sft-config")
    config = folder / "sft.yaml"
    config.write_text(yaml.safe_dump(CONFIG_SETTINGS), encoding="utf-8")
    assert "save_strategy: 'no'" in config.read_text()  # a bare `no` would be YAML's False
    flags = []
    for key, value in CONFIG_SETTINGS.items():
        flags += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    by_flags, by_config, unfused = folder / "flags", folder / "config", folder / "unfused"
    with ThreadPoolExecutor(3) as pool:
        flag_future = pool.submit(run_script, SFT, "--output_dir", str(by_flags), *flags)
        config_future = pool.submit(run_script, SFT, "--output_dir", str(by_config), "--config", str(config))
        unfused_future = pool.submit(run_script, SFT, "--output_dir", str(unfused), *flags, "--fuse_lora", "off")
        return ((flag_future.result(), by_flags), (config_future.result(), by_config),
                (unfused_future.result(), unfused))


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.slow
def test_lora_run_writes_adapter_tokenizer_and_results(lora_run, embedded_root):
    result, out = lora_run
    assert_ok(result)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert not (out / "model.safetensors").exists()  # an adapter, not a full model
    pickled = [p.name for p in out.rglob("*.bin") if p.name != "training_args.bin"]
    assert pickled == [], f"pickle weights written: {pickled}"
    adapter = read_json(out / "adapter_config.json")
    assert adapter["task_type"] == "CAUSAL_LM"
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert adapter["lora_dropout"] == 0.0  # sft.py's default (TRL's is 0.05), measured faster at the same quality
    assert Path(adapter["base_model_name_or_path"]).resolve() == (embedded_root / "model").resolve()
    results = read_json(out / "all_results.json")
    for key in ("train_runtime", "train_loss", "train_tokens_per_second"):
        assert isinstance(results[key], float) and results[key] > 0, (key, results.get(key))
    assert results["use_peft"] is True
    assert math.isfinite(results["train_loss"])
    # the default: each batch's rows packed into one row (rlhfkit/attention.py), so every batch shape has one row
    assert results["batches"] == "padding-free (sdpa_varlen)"
    assert {rows for rows, _ in results["train_batch_shapes"]} == {1}
    # --torch_compile unset: timed after step 3, and a run of seconds is far too short to compile
    assert results["torch_compile"] == "auto: off after step 3", results.get("torch_compile")
    assert 0 < results["torch_compile_projected_seconds"] < 300
    assert list(out.glob("checkpoint-*")) == []  # --save_strategy no
    # --fuse_lora auto (the default): every LoRA layer call folded or as products, none left to PEFT's forward
    calls = results["lora_train_calls"]
    assert results["fuse_lora"] == "auto" and calls["peft"] == 0 and calls["folded"] + calls["products"] > 0, calls


def test_lora_training_loss_decreases(lora_run):
    result, out = lora_run
    assert_ok(result)
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 300
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 10, state["log_history"]
    assert losses[0] > losses[-1], losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


@pytest.mark.slow
def test_lora_sft_beats_base_on_gold_judge(lora_run, embedded_root):
    from rlhfkit.models import load_causal_lm, load_tokenizer

    result, out = lora_run
    assert_ok(result)
    rows = [json.loads(line) for line in (embedded_root / "data/evaluation/train.jsonl").read_text().splitlines()]
    questions = [row["question"] for row in rows[:GOLD_QUESTIONS]]
    assert len(questions) == GOLD_QUESTIONS
    base_dir = str(embedded_root / "model")
    tokenizer = load_tokenizer(base_dir)
    base_score = _mean_gold(load_causal_lm(base_dir), tokenizer, questions)
    sft_model = load_causal_lm(str(out), merge_adapter=True)
    assert not hasattr(sft_model, "peft_config")  # merged: a plain model back
    sft_score = _mean_gold(sft_model, load_tokenizer(str(out)), questions)
    assert sft_score >= base_score + GOLD_MARGIN, f"base {base_score:.3f}, SFT {sft_score:.3f}"


# ------------------------------------------------------------------------------------ full fine-tuning
@pytest.mark.slow
def test_full_finetuning_writes_a_full_model(full_run, embedded_root):
    import torch

    result, out = full_run
    assert_ok(result)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert (out / "tokenizer.json").is_file()
    trained = _safetensors(out / "model.safetensors")
    base = _safetensors(embedded_root / "model" / "model.safetensors")
    assert set(trained) == set(base)
    changed = [name for name in base if not torch.equal(base[name], trained[name])]
    assert len(changed) > len(base) // 2, f"only {len(changed)} of {len(base)} tensors changed"
    results = read_json(out / "all_results.json")
    assert results["use_peft"] is False and results["train_loss"] > 0


def test_do_eval_writes_eval_loss_and_perplexity(full_run):
    result, out = full_run
    assert_ok(result)
    from rlhfkit import toy

    rows = toy.SPLITS["finetune"]
    assert re.search(rf"training rows: {rows - 50}, evaluation rows: 50\b", result.stderr), result.stderr[-3000:]
    metrics = read_json(out / "eval_results.json")
    assert 0 < metrics["eval_loss"] < 10
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)
    all_results = read_json(out / "all_results.json")
    assert all_results["eval_loss"] == metrics["eval_loss"]
    assert "train_loss" in all_results  # eval results are merged in, not written over the training ones


# ------------------------------------------------------------------------------------------- --config
@pytest.mark.slow
def test_yaml_config_run_equals_flag_run(flag_and_config_runs):
    import torch

    (flag_result, by_flags), (config_result, by_config), _ = flag_and_config_runs
    assert_ok(flag_result)
    assert_ok(config_result)
    for out in (by_flags, by_config):  # the settings really applied (not the defaults, in both runs)
        adapter = read_json(out / "adapter_config.json")
        assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
        state = read_json(out / "trainer_state.json")
        assert state["global_step"] == 5 and state["max_steps"] == 5
        assert state["train_batch_size"] == 4
        assert list(out.glob("checkpoint-*")) == []
    flag_weights = _safetensors(by_flags / "adapter_model.safetensors")
    config_weights = _safetensors(by_config / "adapter_model.safetensors")
    assert set(flag_weights) == set(config_weights) and flag_weights
    for name, tensor in flag_weights.items():
        assert torch.equal(tensor, config_weights[name]), name
    flag_loss = read_json(by_flags / "all_results.json")["train_loss"]
    assert flag_loss == read_json(by_config / "all_results.json")["train_loss"]


@pytest.mark.slow
def test_lora_layers_as_one_products_function_train_as_peft_s_form(flag_and_config_runs):
    """--fuse_lora auto (the default) trains the r=4 adapter of a 192-wide model with each LoRA layer as PEFT's
    products in one autograd function (the cost rule keeps such a narrow rank unfolded): after 5 steps the same
    adapter, up to float rounding, as PEFT's own forward (--fuse_lora off) trains."""
    import torch

    (fused_result, fused), _, (unfused_result, unfused) = flag_and_config_runs
    assert_ok(fused_result)
    assert_ok(unfused_result)
    results = read_json(fused / "all_results.json")
    assert results["fuse_lora"] == "auto"
    calls = results["lora_train_calls"]
    assert calls["products"] > 0 and calls["folded"] == calls["peft"] == 0, calls
    assert calls["products"] % 5 == 0  # the same number of LoRA layer calls in each of the 5 steps
    unfused_results = read_json(unfused / "all_results.json")
    assert unfused_results["fuse_lora"] == "off" and "lora_train_calls" not in unfused_results  # nothing replaced
    fused_weights = _safetensors(fused / "adapter_model.safetensors")
    peft_weights = _safetensors(unfused / "adapter_model.safetensors")
    assert set(fused_weights) == set(peft_weights) and fused_weights
    moved = 0
    for name, tensor in peft_weights.items():
        torch.testing.assert_close(fused_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
        moved += int("lora_B" in name and tensor.abs().max() > 1e-3)  # B starts at zero: trained, not equal by luck
    assert moved
    fused_loss, peft_loss = (read_json(out / "all_results.json")["train_loss"] for out in (fused, unfused))
    assert fused_loss == pytest.approx(peft_loss, rel=1e-5)


# ----------------------------------------------------------------------------------------- bad input
def _assert_no_model_written(out: Path) -> None:
    if out.exists():
        left = [p.name for p in out.rglob("*") if p.name in MODEL_FILES]
        assert left == [], f"model files written to {out}: {left}"


@pytest.fixture(scope="module")
def refused_runs(embedded_root, tmp_path_factory):
    """Three refused runs, in parallel: missing model, unknown dataset schema, unknown YAML key."""
    folder = tmp_path_factory.mktemp("sft-bad")
    missing = folder / "no-such-model"
    data = folder / "foobar.jsonl"
    data.write_text('{"foo": "a", "bar": "b"}\n{"foo": "c", "bar": "d"}\n', encoding="utf-8")
    config = folder / "bad.yaml"
    config.write_text("max_steps: 3\nlearning_rate_typo: 0.1\n", encoding="utf-8")
    runs = {
        "model": (["--model_name_or_path", str(missing)], folder / "out-model"),
        "schema": (["--dataset_name", str(data)], folder / "out-schema"),
        "yaml": (["--config", str(config)], folder / "out-yaml"),
    }
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(run_script, SFT, "--output_dir", str(out), "--do_train", "--max_steps", "2", *args)
            for name, (args, out) in runs.items()
        }
        return {name: (futures[name].result(), runs[name][1]) for name in runs}, missing, data, config


@pytest.mark.slow
def test_nonexistent_model_is_a_user_error(refused_runs):
    runs, missing, _, _ = refused_runs
    result, out = runs["model"]
    assert_user_error(result, str(missing), "does not exist")
    _assert_no_model_written(out)


def test_unknown_dataset_schema_is_a_user_error(refused_runs):
    runs, _, data, _ = refused_runs
    result, out = runs["schema"]
    assert_user_error(result, str(data), "[bar, foo]", "match no known schema", "question / response_j / response_k")
    _assert_no_model_written(out)


def test_unknown_yaml_key_is_a_user_error(refused_runs):
    runs, _, _, config = refused_runs
    result, out = runs["yaml"]
    assert_user_error(result, str(config), "unknown key", "learning_rate_typo")
    assert "max_steps" not in result.stderr.splitlines()[-1]  # only the bad key is named
    assert not out.exists()
