"""compare_base_vs_ppo.py and rlhfkit.compare: pairing, KL, judges, outputs and refusals.

Whether the comparison shows what RLHF did (PPO above the base on the reward model and the gold judge) is
asserted on the whole pipeline in ``test_pipeline.py``; here the measuring instrument itself is checked.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, assert_user_error, fixture_path, run_script

COMPARE = str(REPO / "compare_base_vs_ppo.py")


def test_toy_questions_are_recognised():
    from rlhfkit import toy

    assert toy.is_toy_question("What do you think of the red bicycle?")
    assert toy.is_toy_question("Describe the pizza.")
    assert not toy.is_toy_question("What is the currency of the USA?")
    assert not toy.is_toy_question("Describe the dog.")  # not an item of the task


def test_gold_judge_auto_applies_only_to_toy_prompts():
    from rlhfkit import compare, toy

    judge, name = compare.resolve_gold_judge("auto", ["How was the pizza?", "Describe the old watch."])
    assert judge is toy.gold_score and name == "toy"
    assert compare.resolve_gold_judge("auto", ["How was the pizza?", "Why is the sky blue?"]) == (None, None)
    assert compare.resolve_gold_judge("none", ["How was the pizza?"]) == (None, None)
    judge, name = compare.resolve_gold_judge("rlhfkit.toy:gold_score", ["Why?"])
    assert judge("How was the pizza?", "The pizza is great.") == pytest.approx(1 / 3) and name == "rlhfkit.toy:gold_score"


def _loaded(path, name):
    from rlhfkit import compare

    return compare.load_model(name, str(path), None, None, torch.device("cpu"))


@pytest.mark.slow
def test_kl_is_zero_against_itself_and_positive_against_another_model(embedded_root):
    """On a model's own samples, KL from an identical model is 0 for every sequence; from a model with a
    perturbed output layer it is positive on average (k1 is unbiased, so single sequences may be negative)."""
    from rlhfkit import compare

    base = _loaded(embedded_root / "model", "base")
    other = _loaded(embedded_root / "model", "finetuned")
    torch.manual_seed(0)
    with torch.no_grad():
        head = other.model.get_output_embeddings().weight
        head.add_(3 * head.std() * torch.randn_like(head))  # at 1x std the mean KL sat within 3 sigma on an AMD EPYC
    prompts = ["How was the pizza?", "Describe the red bicycle.", "Tell me about the museum."] * 8
    settings = compare.SamplingSettings(max_new_tokens=24, temperature=1.0, batch_size=12)
    _, ids = compare.prompt_ids([base, other], prompts, "auto", 256)

    def constant_scorer(_tokenizer):
        return lambda prompts, *rest: torch.zeros(len(prompts))

    same = compare.sample_model(base, prompts, ids["base"], settings, constant_scorer, None,
                                reference=_loaded(embedded_root / "model", "copy"))
    assert same.kl is not None and torch.tensor(same.kl).abs().max() < 1e-4
    assert same.kl_note is None
    moved = compare.sample_model(other, prompts, ids["finetuned"], settings, constant_scorer, None, reference=base)
    kl = moved.kl.ravel()
    assert kl.mean() > 3 * kl.std(ddof=1) / len(kl) ** 0.5, kl  # positive, well beyond the estimate's noise
    greedy = compare.SamplingSettings(max_new_tokens=8, do_sample=False)
    assert compare.kl_unavailable(other, base, greedy).startswith("greedy decoding")
    assert compare.kl_unavailable(base, base, settings) == "this is the base"


@pytest.mark.slow
def test_a_model_against_itself_ties_everywhere(embedded_root, reward_model, tmp_path):
    """Same model, same seed: every answer pair is identical, so the paired comparison must be all ties
    (win rate exactly 0.5, difference 0, KL 0). A training log beside the fine-tuned model is picked up."""
    finetuned = tmp_path / "finetuned"
    shutil.copytree(embedded_root / "model", finetuned)
    history = [{"episode": 32 * (i + 1), "objective/scores": 0.1 * i, "objective/kl": 0.05 * i} for i in range(5)]
    (finetuned / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    out = tmp_path / "cmp"
    result = run_script(COMPARE, "--base_model", str(embedded_root / "model"), "--finetuned_model", str(finetuned),
                        "--reward_model", reward_model, "--num_samples", "12",
                        "--generations_per_prompt", "2", "--max_new_tokens", "24", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary["models"]) == {"base", "finetuned"}
    win = summary["win_rates"]["finetuned_vs_base"]
    for judge in ("reward", "gold"):  # the embedded evaluation prompts are toy questions: gold judge on
        assert win[judge]["ties"] == 12 and win[judge]["win_rate"] == 0.5 and win[judge]["mean_difference"] == 0
    assert abs(summary["models"]["finetuned"]["kl_from_base"]["mean"]) < 1e-4
    assert summary["models"]["base"]["kl_note"] == "this is the base"
    assert summary["settings"]["gold_judge"] == "toy" and summary["settings"]["num_prompts"] == 12
    assert summary["settings"]["training_log"].endswith("trainer_state.json")
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 24 and {r["generation"] for r in records} == {0, 1}
    assert all(r["base"]["response"] == r["finetuned"]["response"] for r in records)
    assert all(set(r["base"]) >= {"response", "reward", "gold", "tokens", "stopped"} for r in records)
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "win rate finetuned over base (reward): 0.500" in result.stdout


@pytest.mark.slow
def test_a_model_with_another_tokenizer_is_scored_but_has_no_kl(embedded_root, reward_model, tmp_path):
    """stories260K (its own 512-token vocabulary) as the SFT column: the reward model re-tokenises its text,
    and its KL from the base is reported missing with the reason."""
    stories = fixture_path("models", "stories260K")
    out = tmp_path / "cmp"
    result = run_script(COMPARE, "--finetuned_model", str(embedded_root / "model"), "--sft_model", str(stories),
                        "--reward_model", reward_model, "--num_samples", "6",
                        "--max_new_tokens", "16", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "comparison.json").read_text())
    sft = summary["models"]["sft"]
    assert sft["kl_from_base"] is None and "different tokenizers" in sft["kl_note"]
    assert sft["reward"]["n"] == 6 and set(summary["win_rates"]) == {"finetuned_vs_base", "sft_vs_base",
                                                                       "finetuned_vs_sft"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["missing_split", "missing_model", "no_reward_model", "greedy_many", "bad_judge", "causal_lm_as_reward_model"],
)
def test_bad_input_is_one_line_and_writes_nothing(case, embedded_root, reward_model, tmp_path):
    model, rm = str(embedded_root / "model"), reward_model
    common = ["--base_model", model, "--output_dir", str(tmp_path / "out"), "--num_samples", "2"]
    args, fragments = {
        "missing_split": (["--finetuned_model", model, "--reward_model", rm, "--dataset_split", "train_prefs"],
                          ["split 'train_prefs' not found", "splits there: train"]),
        "missing_model": (["--finetuned_model", str(tmp_path / "nope"), "--reward_model", rm],
                          ["fine-tuned model path", "does not exist"]),
        "no_reward_model": (["--finetuned_model", model], ["--reward_model is required"]),
        "greedy_many": (["--finetuned_model", model, "--reward_model", rm, "--do_sample", "False",
                         "--generations_per_prompt", "2"], ["needs sampling"]),
        "bad_judge": (["--finetuned_model", model, "--reward_model", rm, "--gold_judge", "nomodule_xyz:f"],
                      ["cannot import nomodule_xyz"]),
        "causal_lm_as_reward_model": (["--finetuned_model", model, "--reward_model", model],
                                      ["is a LlamaForCausalLM, not a reward model", "reward_modeling.py"]),
    }[case]
    result = run_script(COMPARE, *common, *args)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "out").exists()
