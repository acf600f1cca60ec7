"""optimum-habana's `examples/trl` README commands for steps 1 (SFT), 2 (merge), 3 (reward modeling), 4 (merge of the reward
adapter), 5 (PPO), 6 (generation) and the base-vs-PPO comparison, run as written.

The commands below are copied literally from optimum-habana's `examples/trl` README. Only these substitutions are made (see
``_as_run``), because this machine is offline and has no Gaudi:

* ``google/gemma-3-270m`` -> the embedded default's model folder (a tiny pretrained Llama);
* ``lvwerra/stack-exchange-paired`` -> the embedded dataset root (same ``data/finetune`` layout);
* ``--use_habana --use_lazy_mode`` are dropped: there is no Gaudi (habana_frameworks) here, and
  ``--use_habana`` correctly refuses to run without one;
* step 5's ``PT_HPU_LAZY_MODE=1`` prefix is passed as an environment variable (it is harmless off Gaudi).

Step 3 names no dataset, so it trains on the embedded toy pairs (``data/reward``, held-out
``data/evaluation``), as optimum-habana's script defaults to stack-exchange-paired's. Step 4 merges the reward
adapter into the raw base, not into ``./sft_sanity_merged`` that it was trained on: the README's command
is run as written, and the merge must say so loudly.

The comparison asks for split ``train_prefs``, which stack-exchange-paired (and the embedded copy of its
layout) does not have: as written it must stop with an error listing the splits there are; against a local
dataset folder that has a ``train_prefs`` split it runs.

The relative output paths (``./sft_sanity`` ...) are kept: the commands run with ``cwd`` = a temporary folder.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import REPO, assert_ok, assert_user_error, run_script

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
STEP3 = [
    "python", "reward_modeling.py",
    "--model_name_or_path", "./sft_sanity_merged",
    "--tokenizer_name_or_path", "google/gemma-3-270m",
    "--output_dir", "./rm_sanity",
    "--optim", "adamw_torch",
    "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "2",
    "--num_train_epochs", "1",
    "--train_subset", "500",
    "--eval_subset", "100",
    "--max_length", "384",
    "--bf16",
]
STEP4 = [
    "python", "merge_peft_adapter.py",
    "--base_model_name", "google/gemma-3-270m",
    "--adapter_model_name", "./rm_sanity",
    "--output_name", "./rm_sanity_merged",
]
STEP5 = [
    "PT_HPU_LAZY_MODE=1", "python", "ppo.py",
    "--model_name_or_path", "./sft_sanity_merged",
    "--reward_model_name", "./rm_sanity_merged",
    "--tokenizer_name_or_path", "google/gemma-3-270m",
    "--output_dir", "./ppo_sanity",
    "--batch_size", "2",
    "--mini_batch_size", "1",
    "--gradient_accumulation_steps", "1",
    "--ppo_epochs", "1",
    "--steps", "64",
    "--input_max_length", "256",
    "--output_max_length", "64",
    "--learning_rate", "1.4e-5",
    "--early_stopping", "True",
    "--batched_gen", "True",
    "--max_train_samples", "256",
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
STEP7 = [  # "Comparing Base and PPO Models"
    "PT_HPU_LAZY_MODE=1", "python", "compare_base_vs_ppo.py",
    "--base_model", "google/gemma-3-270m",
    "--finetuned_model", "./ppo_sanity",
    "--reward_model", "./rm_sanity_merged",
    "--dataset_name", "lvwerra/stack-exchange-paired",
    "--dataset_split", "train_prefs",
    "--num_samples", "5",
]
GAUDI_FLAGS = ("--use_habana", "--use_lazy_mode")  # no Gaudi here


def _env_prefix(command: list[str]) -> tuple[dict[str, str], list[str]]:
    """(environment, command) for a command that starts with ``NAME=value`` assignments."""
    env = {}
    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", command[0]):
        name, _, value = command[0].partition("=")
        env[name], command = value, command[1:]
    return env, command


def _as_run(command: list[str], replacements: dict[str, str]) -> list[str]:
    """optimum-habana's command as run here: the script by its repo path, hub ids replaced, Gaudi flags dropped."""
    _, command = _env_prefix(command)
    assert command[0] == "python"
    args = [replacements.get(arg, arg) for arg in command[2:] if arg not in GAUDI_FLAGS]
    return [str(REPO / command[1]), *args]


@pytest.fixture(scope="module")
def pipeline(embedded_root, tmp_path_factory):
    """Steps 1 to 6 in order in one working folder; a failed step leaves the steps that need its output unrun."""
    cwd = tmp_path_factory.mktemp("seed000")
    replacements = {
        "google/gemma-3-270m": str(embedded_root / "model"),
        "lvwerra/stack-exchange-paired": str(embedded_root),
    }
    results = {}

    def run_in_order(*steps):
        for name, command in steps:
            results[name] = run_script(*_as_run(command, replacements), cwd=cwd, env=_env_prefix(command)[0])
            if results[name].returncode != 0:
                break

    run_in_order(("step1", STEP1), ("step2", STEP2))
    if "step2" in results and results["step2"].returncode == 0:
        # one after the other: side by side, the processes' thread pools oversubscribe a small machine
        run_in_order(("step3", STEP3), ("step4", STEP4), ("step5", STEP5), ("step6", STEP6))
    return results, cwd


@pytest.mark.slow
def test_step1_sft(pipeline, embedded_root):
    import json

    results, cwd = pipeline
    assert_ok(results["step1"])
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
    assert "data/finetune" in results["step1"].stderr  # optimum-habana's per-stage sub-folder of the dataset


def test_step2_merge(pipeline):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, cwd = pipeline
    assert_ok(results["step2"])
    merged = cwd / "sft_sanity_merged"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    with torch.no_grad():
        logits = model(**tokenizer(["Question: How was the pizza?\n\nAnswer:"], return_tensors="pt")).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_step3_reward_modeling(pipeline):
    import json

    from safetensors.torch import load_file

    results, cwd = pipeline
    assert_ok(results["step3"])
    out = cwd / "rm_sanity"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    assert adapter["base_model_name_or_path"].rstrip("/").endswith("sft_sanity_merged")
    assert any("score" in name for name in load_file(str(out / "adapter_model.safetensors")))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 500 // (2 * 2) and state["train_batch_size"] == 2  # 1 epoch of 500 pairs
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_pairs"] == 100 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results["train_loss"] > 0 and all_results["use_peft"] is True
    assert "data/reward" in results["step3"].stderr and "data/evaluation" in results["step3"].stderr


def test_step4_merges_reward_adapter_into_raw_base_with_a_warning(pipeline, embedded_root):
    import json

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    results, cwd = pipeline
    assert_ok(results["step4"])
    warnings = [line for line in results["step4"].stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, results["step4"].stderr
    assert "sft_sanity_merged" in warnings[0] and str(embedded_root / "model") in warnings[0]
    merged = cwd / "rm_sanity_merged"
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert model.config.num_labels == 1 and model.score.weight.shape[0] == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        scores = model(**tokenizer(["Question: How was the pizza?\n\nAnswer: The pizza is great.</s>"],
                                   return_tensors="pt")).logits
    assert scores.shape == (1, 1) and torch.isfinite(scores).all()
    info = json.loads((merged / "merge_info.json").read_text())
    assert info["task_type"] == "SEQ_CLS" and info["base"] == str(embedded_root / "model")


def test_step5_ppo(pipeline):
    """64 PPO steps of 2 episodes from the merged SFT model against the merged reward model; the policy is
    saved merged (loadable by step 6), with the metrics and the per-episode log."""
    import csv

    results, cwd = pipeline
    assert "step5" in results, "an earlier step failed"
    assert_ok(results["step5"])
    out = cwd / "ppo_sanity"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # merged by default
    summary = json.loads((out / "all_results.json").read_text())
    assert summary["train_steps"] == 64 and summary["train_episodes"] == 128
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert len(history) == 64
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl",
                "policy/clipfrac", "loss/policy", "loss/value", "val/ratio", "eps", "policy/early_stopped"):
        assert all(isinstance(h[key], float | int) for h in history), key
    # one PPO epoch of 2 mini-batches of 1: the ratio of the first mini-batch is exactly 1 (nothing updated yet)
    assert all(abs(h["val/ratio"] - 1) < 0.1 for h in history)
    with open(out / "training_log.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 128 and {r["step"] for r in rows} == {str(i) for i in range(1, 65)}
    assert "256 prompts" in results["step5"].stderr  # --max_train_samples 256


def test_step6_generation(pipeline):
    results, _ = pipeline
    result = results["step6"]
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "### prompt: What is the currency of the USA?"
    assert len(lines) >= 2 and lines[1].strip(), result.stdout
    assert "bfloat16" in result.stderr  # --bf16 honoured
    assert re.search(r"\d+ new tokens in [\d.]+s: [\d.]+ tokens/s", result.stderr), result.stderr


@pytest.mark.slow
def test_step7_compare_as_written_lists_the_splits_there_are(pipeline, embedded_root):
    results, cwd = pipeline
    assert "step5" in results, "an earlier step failed"
    assert_ok(results["step5"])
    replacements = {"google/gemma-3-270m": str(embedded_root / "model"),
                    "lvwerra/stack-exchange-paired": str(embedded_root)}
    result = run_script(*_as_run(STEP7, replacements), cwd=cwd, env=_env_prefix(STEP7)[0])
    assert_user_error(result, "split 'train_prefs' not found", "splits there: train")
    assert not (cwd / "comparison").exists()


@pytest.mark.slow
def test_step7_compare_runs_against_local_paths(pipeline, embedded_root, tmp_path):
    """The command as written, with the hub ids replaced by local folders; the dataset folder holds a
    ``train_prefs`` split (the file name up to the first '-' or '.' names the split)."""
    import shutil

    results, cwd = pipeline
    assert "step5" in results, "an earlier step failed"
    assert_ok(results["step5"])
    dataset = tmp_path / "stack-exchange-paired"
    (dataset / "data" / "evaluation").mkdir(parents=True)
    shutil.copy(embedded_root / "data" / "evaluation" / "train.jsonl",
                dataset / "data" / "evaluation" / "train_prefs-00000-of-00001.jsonl")
    replacements = {"google/gemma-3-270m": str(embedded_root / "model"), "lvwerra/stack-exchange-paired": str(dataset)}
    result = run_script(*_as_run(STEP7, replacements), cwd=cwd, env=_env_prefix(STEP7)[0])
    assert_ok(result)
    summary = json.loads((cwd / "comparison" / "comparison.json").read_text())
    assert summary["settings"]["num_prompts"] == 5 and summary["settings"]["dataset_split"] == "train_prefs"
    assert summary["models"]["finetuned"]["path"] == "./ppo_sanity"
    assert summary["models"]["finetuned"]["kl_from_base"]["n"] == 5
    assert summary["settings"]["training_log"]  # ppo.py's trainer_state.json beside the policy
    assert "data/evaluation" in result.stderr
    assert len((cwd / "comparison" / "samples.jsonl").read_text().splitlines()) == 5
    assert "win rate finetuned over base (reward)" in result.stdout


def test_commands_match_the_seed_readme():
    """The lists above are the README's commands, token for token (guards the copy)."""
    seeds = sorted((REPO.parent / "shared" / "seeds").glob("000_*.txt"))
    if not seeds:
        pytest.skip("optimum-habana's examples/trl README (../shared/seeds) is not available here")
    text = seeds[0].read_text(encoding="utf-8")
    blocks = [shlex.split(block.replace("\\\n", " ")) for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    for command in (STEP1, STEP2, STEP3, STEP4, STEP5, STEP6, STEP7):
        assert command in blocks, command
