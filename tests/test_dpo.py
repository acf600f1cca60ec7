"""dpo.py end to end: LoRA DPO from an SFT-merged model, full fine-tuning with a reference copy or with
precomputed reference log-probs, what the trainer holds in memory, and refused input.

The LoRA pipeline (sft.py -> merge_peft_adapter.py -> dpo.py, subprocesses as a user runs them) is one chain;
the short full fine-tuning runs go beside its first step, two at a time. The DPO policy is checked against the toy
task's gold judge: its greedy answers to the evaluation questions must score clearly better than the SFT
model it started from. SFT and DPO run in fp32 here: in bf16 the outcome depends on the processor's bf16 kernels
(on an AMD EPYC with avx512_bf16 the bf16 DPO policy collapsed to "The ... is bright." and scored 0.070 against
SFT's 0.173; on the Intel Xeon with AMX where the settings were tuned, 0.537 against 0.333). In fp32 with the
settings below (300 steps, lr 2e-3, beta 0.1) it scored 0.193 against SFT's 0.107 on the AMD EPYC; a higher
learning rate (5e-3) collapses into repetition, and shorter or gentler runs leave the greedy answers as SFT's.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, assert_ok, assert_user_error, fixture_path, load_script, read_json, run_script

DPO = str(REPO / "dpo.py")
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True"]
DPO_STEPS = 150
# DPO's sigmoid loss plus TRL's "sft" term on the chosen answers (RPO): on the toy task plain DPO learns the pairs
# (held-out reward accuracy 0.81-0.85) but lowers the SFT model's sampled gold score (0.16 -> -0.44 to -0.66 at
# 1e-3 to 2e-3; 0.13 at 5e-4): it pushes the rejected answers down and the chosen ones with them. With the SFT term
# the sampled gold rose to 0.30 (150 or 300 steps), at held-out accuracy 0.82-0.86.
DPO_ARGS = ["--max_steps", str(DPO_STEPS), "--per_device_train_batch_size", "16", "--learning_rate", "2e-3",
            "--beta", "0.1", "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "1.0", "--eval_subset", "200",
            "--bf16", "False", *QUIET]
SMALL = ["--train_subset", "64", "--eval_subset", "16", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "8"]
# fp32: the margin before training must be exactly 0 (policy and reference are the same weights); bf16 autocast,
# the CPU default here, rounds the two forward passes differently
FULL_ARGS = ["--use_peft", "False", "--max_steps", "5", "--learning_rate", "1e-4", "--bf16", "False", *SMALL, *QUIET]
ALPACA = ("data", "llamafactory-alpaca_en_demo.json")
GOLD_QUESTIONS = 100
MODEL_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")
# two runs at a time on a 2-core machine: one thread each, or torch's thread pools oversubscribe the cores and
# a small run slows down ~30x
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _mean_gold(model, tokenizer, questions: list[str]) -> float:
    """The gold judge's mean over 4 answers per question sampled at temperature 0.7 (seed 0), as PPO's test samples:
    greedy answers are one template per model ("The X is excellent."), which hides what a model learned."""
    from rlhfkit import toy

    return toy.sampled_gold(model, tokenizer, questions, samples=4, temperature=0.7)


def _assert_eval_keys(results: dict) -> None:
    """Held-out metrics are named eval_<metric> (after training) or eval_before_<metric> (before)."""
    evals = [k for k in results if k.startswith("eval")]
    assert all(k.startswith("eval_") for k in evals), evals
    before = [k for k in evals if k.startswith("eval_before")]
    assert all(k.startswith("eval_before_") for k in before), before


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runs(shared_runs, tmp_path_factory):
    """Every subprocess of this module: name -> (CompletedProcess, output folder).

    The toy SFT model (LoRA, merged: conftest's SHARED_RUNS, shared with test_ppo) runs beside the short full
    fine-tuning runs and the refused input (two at a time, one thread each); then the long LoRA DPO run.
    """
    folder = tmp_path_factory.mktemp("dpo")
    policy = folder / "dpo-lora"
    others = {
        "full": FULL_ARGS,
        "precomputed": [*FULL_ARGS, "--precompute_ref_log_probs", "True"],
    }
    if FIXTURES.joinpath(*ALPACA).exists():
        others["alpaca"] = ["--dataset_name", str(FIXTURES.joinpath(*ALPACA)), "--max_steps", "2", *QUIET]

    def run(name: str):
        return run_script(DPO, "--output_dir", str(folder / name), *others[name], env=ONE_THREAD), folder / name

    with ThreadPoolExecutor(2) as pool:
        sft_future = pool.submit(shared_runs, "toy-sft")
        futures = {name: pool.submit(run, name) for name in others}
        results = {name: future.result() for name, future in futures.items()}
        shared, sft_results = sft_future.result()
    sft, merged = shared / "sft", shared / "sft-merged"
    results["sft"] = (sft_results[0], sft)
    if len(sft_results) == 2:
        results["merge"] = (sft_results[1], merged)
        if results["merge"][0].returncode == 0:
            results["lora"] = (run_script(DPO, "--model_name_or_path", str(merged), "--output_dir", str(policy),
                                          *DPO_ARGS), policy)
    return results


def _lora(runs):
    for step in ("sft", "merge", "lora"):
        assert step in runs, f"the LoRA chain stopped before {step}"
        assert_ok(runs[step][0])
    return runs["lora"]


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.mark.slow
def test_lora_dpo_from_sft_merged_model(runs):
    result, out = _lora(runs)
    _, merged = runs["merge"]
    results = read_json(out / "all_results.json")
    assert results["reference"] == "adapter disabled (no copy)"
    assert "reference: adapter disabled (no copy)" in result.stderr
    assert results["use_peft"] is True and results["model"] == str(merged)
    adapter = read_json(out / "adapter_config.json")
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["base_model_name_or_path"] == str(merged)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert read_json(out / "trainer_state.json")["global_step"] == DPO_STEPS
    assert "training pairs: 5000, held-out pairs: 200" in result.stderr


def test_lora_dpo_moves_held_out_rewards(runs):
    _, out = _lora(runs)
    results = read_json(out / "all_results.json")
    metrics = read_json(out / "eval_results.json")
    _assert_eval_keys(results)
    _assert_eval_keys(metrics)
    # before training the policy is its reference (LoRA starts at zero): no implicit reward at all
    assert results["eval_before_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval_rewards/margins"] == results["eval_rewards/margins"]
    assert results["eval_rewards/margins"] > results["eval_before_rewards/margins"] + 0.3, results
    assert results["eval_rewards/accuracies"] > 0.6, results
    assert results["eval_loss"] < results["eval_before_loss"]


@pytest.mark.slow
def test_dpo_policy_scores_at_least_sft_on_the_gold_judge(runs, embedded_root):
    from rlhfkit.models import load_causal_lm, load_tokenizer

    _, out = _lora(runs)
    _, merged = runs["merge"]
    rows = [json.loads(line) for line in (embedded_root / "data/evaluation/train.jsonl").read_text().splitlines()]
    questions = [row["question"] for row in rows[:GOLD_QUESTIONS]]
    sft_score = _mean_gold(load_causal_lm(str(merged)), load_tokenizer(str(merged)), questions)
    policy = load_causal_lm(str(out), merge_adapter=True)
    assert not hasattr(policy, "peft_config")
    dpo_score = _mean_gold(policy, load_tokenizer(str(out)), questions)
    assert dpo_score >= sft_score + 0.05, f"SFT {sft_score:.3f}, DPO {dpo_score:.3f}"


# ------------------------------------------------------------------------------------- full fine-tuning
@pytest.mark.parametrize("name, reference", [("full", "separate copy"), ("precomputed", "precomputed log-probs")])
def test_full_finetuning_reference(runs, embedded_root, name, reference):
    result, out = runs[name]
    assert_ok(result)
    results = read_json(out / "all_results.json")
    assert results["reference"] == reference
    assert f"reference: {reference}" in result.stderr
    assert results["use_peft"] is False
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert read_json(out / "trainer_state.json")["global_step"] == 5
    _assert_eval_keys(results)
    assert results["eval_before_rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # the reference is the start
    assert results["eval_rewards/margins"] != results["eval_before_rewards/margins"]  # 5 steps moved it


# -------------------------------------------------------------------------------- what is held in memory
class _Built(Exception):
    """Raised to stop dpo.main right after it built the trainer."""


def _built_trainer(monkeypatch, tmp_path: Path, *flags: str):
    """The DPOTrainer exactly as dpo.main builds it (stopped before the first evaluation)."""
    script = load_script("dpo.py")
    built = {}

    def stop(trainer, prefix):
        built["trainer"] = trainer
        raise _Built

    from rlhfkit import preference_training

    monkeypatch.setattr(preference_training, "held_out_metrics", stop)
    args = ["--output_dir", str(tmp_path / "out"), *SMALL, "--max_steps", "1", "--report_to", "none", *QUIET, *flags]
    with pytest.raises(_Built):
        script.main(*script.make_dpo_parser().parse_args_and_config(args))
    return built["trainer"]


@pytest.mark.slow
def test_lora_holds_no_second_copy_and_full_finetuning_does(monkeypatch, tmp_path, embedded_root):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import count_parameters

    base = count_parameters(AutoModelForCausalLM.from_pretrained(str(embedded_root / "model")))

    lora = _built_trainer(monkeypatch, tmp_path / "lora")
    assert lora.ref_model is None
    held = count_parameters(lora.model)
    trainable = count_parameters(lora.model, trainable_only=True)
    assert base < held < 1.2 * base, (base, held)  # the base once, plus the adapter
    assert 0 < trainable == held - base  # only the adapter trains

    full = _built_trainer(monkeypatch, tmp_path / "full", "--use_peft", "False")
    assert full.ref_model is not None
    assert count_parameters(full.model) == count_parameters(full.ref_model) == base
    policy_storage = {p.data_ptr() for p in full.model.parameters()}
    assert policy_storage.isdisjoint(p.data_ptr() for p in full.ref_model.parameters())  # a real copy


# ----------------------------------------------------------------------------------------- bad input
def test_alpaca_file_is_a_user_error_naming_preference(runs):
    data = fixture_path(*ALPACA)
    result, out = runs["alpaca"]
    assert_user_error(result, str(data), "alpaca", "preference")
    if out.exists():
        assert [p.name for p in out.rglob("*") if p.name in MODEL_FILES] == []
