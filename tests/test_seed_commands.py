"""Seed 000's README commands for steps 1 (SFT), 2 (merge) and 6 (generation), run as written.

The commands below are copied literally from the seed README. Only these substitutions are made (see
``_as_run``), because this machine is offline and has no Gaudi:

* ``google/gemma-3-270m`` -> the embedded default's model folder (a tiny pretrained Llama);
* ``lvwerra/stack-exchange-paired`` -> the embedded dataset root (same ``data/finetune`` layout);
* ``--use_habana --use_lazy_mode`` are dropped: there is no Gaudi (habana_frameworks) here, and
  ``--use_habana`` correctly refuses to run without one;
* step 6's ``./ppo_sanity`` -> ``./sft_sanity_merged``: PPO (step 5) lands in a later issue, so the
  generation sanity check runs on the merged SFT model instead.

The relative output paths (``./sft_sanity`` ...) are kept: the commands run with ``cwd`` = a temporary folder.
"""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO, run_script

STEP1 = [
    "python", "sft.py",
    "--model_name_or_path", "google/gemma-3-270m",
    "--dataset_name", "lvwerra/stack-exchange-paired",
    "--output_dir", "./sft_sanity",
    "--do_train",
    "--max_steps", "50",
    "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "2",
    "--learning_rate", "3e-5",
    "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj",
    "--bf16",
    "--use_habana",
    "--use_lazy_mode",
]
STEP2 = [
    "python", "merge_peft_adapter.py",
    "--base_model_name", "google/gemma-3-270m",
    "--adapter_model_name", "./sft_sanity",
    "--output_name", "./sft_sanity_merged",
]
STEP6 = [
    "python", "run_generation.py",
    "--model_name_or_path", "./ppo_sanity",
    "--prompt", "What is the currency of the USA?",
    "--bf16",
    "--use_kv_cache",
    "--max_new_tokens", "64",
    "--batch_size", "1",
]
GAUDI_FLAGS = ("--use_habana", "--use_lazy_mode")  # no Gaudi here


def _as_run(command: list[str], replacements: dict[str, str]) -> list[str]:
    """The seed command as run here: the script by its repo path, hub ids replaced, Gaudi flags dropped."""
    assert command[0] == "python"
    args = [replacements.get(arg, arg) for arg in command[2:] if arg not in GAUDI_FLAGS]
    return [str(REPO / command[1]), *args]


def _ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def pipeline(embedded_root, tmp_path_factory):
    """Steps 1, 2 and 6 in order, in one working folder; a failed step leaves the later ones unrun."""
    cwd = tmp_path_factory.mktemp("seed000")
    replacements = {
        "google/gemma-3-270m": str(embedded_root / "model"),
        "lvwerra/stack-exchange-paired": str(embedded_root),
        "./ppo_sanity": "./sft_sanity_merged",  # PPO (step 5) lands in a later issue
    }
    results = {}
    for name, command in (("step1", STEP1), ("step2", STEP2), ("step6", STEP6)):
        results[name] = run_script(*_as_run(command, replacements), cwd=cwd)
        if results[name].returncode != 0:
            break
    return results, cwd


def test_step1_sft(pipeline, embedded_root):
    import json

    results, cwd = pipeline
    _ok(results["step1"])
    out = cwd / "sft_sanity"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "all_results.json"):
        assert (out / name).is_file(), name
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert adapter["base_model_name_or_path"] == str(embedded_root / "model")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 50 and state["train_batch_size"] == 2
    results_json = json.loads((out / "all_results.json").read_text())
    assert results_json["train_loss"] > 0 and results_json["device"]["type"] == "cpu"
    assert "data/finetune" in results["step1"].stderr  # the seed's per-stage sub-folder of the dataset


def test_step2_merge(pipeline):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, cwd = pipeline
    _ok(results["step2"])
    merged = cwd / "sft_sanity_merged"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    with torch.no_grad():
        logits = model(**tokenizer(["Question: How was the pizza?\n\nAnswer:"], return_tensors="pt")).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_step6_generation(pipeline):
    results, _ = pipeline
    result = results["step6"]
    _ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "### prompt: What is the currency of the USA?"
    assert len(lines) >= 2 and lines[1].strip(), result.stdout
    assert "bfloat16" in result.stderr  # --bf16 honoured
    assert re.search(r"\d+ new tokens in [\d.]+s: [\d.]+ tokens/s", result.stderr), result.stderr


def test_commands_match_the_seed_readme():
    """The lists above are the README's commands, token for token (guards the copy)."""
    seeds = sorted((REPO.parent / "shared" / "seeds").glob("000_*.txt"))
    if not seeds:
        pytest.skip("seed 000's README is not available here")
    text = seeds[0].read_text(encoding="utf-8")
    blocks = [shlex.split(block.replace("\\\n", " ")) for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    for command in (STEP1, STEP2, STEP6):
        assert command in blocks, command
