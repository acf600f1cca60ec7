"""kto.py end to end: KTO (TRL's KTOTrainer) learns to prefer the desirable answers of held-out examples, holds no
second copy under LoRA, trains on each unpaired format (labelled messages as LLaMA-Factory writes them,
prompt/completion/label, and preference pairs split in two), and refuses what KTO cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_user_error, fixture_path, run_script

pytestmark = pytest.mark.slow  # every test here trains a model or runs a script

KTO = str(REPO / "kto.py")
STORIES = ("models", "stories260K")
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True", "--report_to", "none", "--bf16", "False"]
TWO_STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "256", *QUIET]


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_kto_prefers_the_desirable_answers_of_held_out_examples(embedded_root, tmp_path):
    """40 LoRA steps on the embedded toy task's pairs (each split into a desirable and an undesirable example):
    on held-out examples the implied reward of the desirable answers ends clearly above the undesirable ones'
    (both are exactly 0 before training: the policy is its reference)."""
    out = tmp_path / "kto"
    result = run_script(KTO, "--output_dir", str(out), "--max_steps", "40", "--per_device_train_batch_size", "16",
                        "--learning_rate", "2e-3", "--eval_subset", "100", *QUIET)
    assert result.returncode == 0, result.stderr[-3000:]
    results = _read(out / "all_results.json")
    assert results["eval_before_rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert results["eval_before_rewards/rejected"] == pytest.approx(0, abs=1e-6)
    margin = results["eval_rewards/chosen"] - results["eval_rewards/rejected"]
    assert margin > 0.5, results
    assert results["reference"] == "adapter disabled (no copy)" and results["use_peft"] is True
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert _read(out / "eval_results.json")["eval_rewards/margins"] == pytest.approx(results["eval_rewards/margins"])
    assert "held-out examples: chosen reward" in result.stderr


@pytest.mark.parametrize("fmt", ["messages_label", "prompt_completion_label", "sharegpt_pairs"])
def test_kto_trains_two_steps(fmt, tmp_path):
    if fmt == "messages_label":  # LLaMA-Factory's KTO demo (its rows are long: only those that fit are used)
        path, extra = fixture_path("data", "llamafactory-kto_en_demo.json"), ["--max_length", "512"]
    elif fmt == "prompt_completion_label":
        path, extra = write_json(tmp_path / "pcl.json", [
            {"prompt": f"Tell me about cat {i}.", "completion": f" Cat {i} is {'happy' if i % 2 else 'sad'}.",
             "label": bool(i % 2)} for i in range(16)]), []
    else:
        path, extra = write_json(tmp_path / "pairs.json", [
            {"conversations": [{"from": "human", "value": f"讲一个关于猫 {i} 的故事。"}],
             "chosen": {"from": "gpt", "value": f"Cat {i} is happy."},
             "rejected": {"from": "gpt", "value": f"Cat {i} is sad."}} for i in range(12)]), []
    out = tmp_path / "out"
    result = run_script(KTO, "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name", str(path),
                        "--output_dir", str(out), "--eval_subset", "4", *TWO_STEPS, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    results = _read(out / "all_results.json")
    assert results["train_runtime"] > 0 and "eval_rewards/chosen" in results


@pytest.mark.parametrize("case", ["batch_of_one", "prompts_only", "bad_label"])
def test_kto_refuses_in_one_line(case, tmp_path):
    flags = list(TWO_STEPS)
    if case == "batch_of_one":
        rows, fragments = [{"prompt": "Hi", "completion": "Hello", "label": True}] * 8, ("KL term", "2 or more")
        flags[flags.index("--per_device_train_batch_size") + 1] = "1"
    elif case == "prompts_only":
        rows, fragments = [{"prompt": "Hi"}] * 8, ("prompt_only schema", "no unpaired data", "'label' column")
    else:
        rows, fragments = [{"prompt": "Hi", "completion": "Hello", "label": "yes"}] * 8, ("'label' is 'yes'",)
    out = tmp_path / "out"
    result = run_script(KTO, "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name",
                        str(write_json(tmp_path / "data.json", rows)), "--output_dir", str(out), *flags)
    assert_user_error(result, *fragments)
    assert not out.exists()
