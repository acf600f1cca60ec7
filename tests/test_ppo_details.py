"""PPO implementation details that must hold whatever the model or the flags (Huang et al. 2024's list, and
old TRL's rules where the flags are old TRL's):

* dropout written into model code (Llama's ``attention_dropout``) is off: the ratio before any update is 1;
* the logged ``lr`` is the rate the step's optimizer steps used;
* ``--early_stopping`` reads ``policy/policykl`` (old TRL's k1 estimate), not ``policy/approxkl``;
* the count of skipped NaN batches survives a resume, so ``--max_bad_batches`` counts over the whole run;
* ``--top_k`` / ``--top_p`` are refused: the log-probs, ratio and KL are those of the full distribution.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, assert_user_error, load_script, read_json, run_script

PPO = str(REPO / "ppo.py")
SMALL = ["--reward_function", "toy", "--batch_size", "4", "--mini_batch_size", "4", "--ppo_epochs", "1",
         "--output_max_length", "12", "--report_to", "none", "--sample_every", "0"]


def _history(out) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def _dropout_model(embedded_root, tmp_path):
    folder = tmp_path / "dropout-model"
    shutil.copytree(embedded_root / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_dropout_in_model_code_is_disabled(embedded_root, tmp_path):
    from rlhfkit import models, sampling

    folder = _dropout_model(embedded_root, tmp_path)
    model = models.load_causal_lm(str(folder))
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
    episodes = sampling.Episodes(["x"], ids[:, :4], torch.ones_like(ids[:, :4]), ids[:, 4:],
                                 torch.ones_like(ids[:, 4:]), torch.tensor([False]), [""])
    torch.manual_seed(0)
    rollout = sampling.response_logprobs(model.eval(), episodes, 1.0)
    update = sampling.response_logprobs(model.train(), episodes, 1.0)
    assert (rollout - update).abs().max() > 1e-3  # with dropout on, train mode differs: the check can fail
    models.disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    assert torch.equal(sampling.response_logprobs(model.train(), episodes, 1.0), rollout)


@pytest.mark.slow
@pytest.mark.parametrize(("source", "fuse"),
                         [("forward", "off"), ("forward", "on"), ("forward", "auto"), ("generation", "auto")])
def test_ratio_starts_at_one_and_lr_is_the_rate_used(source, fuse, embedded_root, tmp_path):
    """One optimizer step per PPO step: its ratio is computed before any update, so it is 1 even for a model whose
    attention applies dropout from its config (dropout left on moves it by about 1e-2): exactly 1 when the rollout's
    log-probs come from the same forward pass (with the LoRA layers folded, or as one products function, in both), within
    float32 rounding when they come from generation's cached decoding steps. The linear schedule's rates are 1e-3
    then 5e-4."""
    folder = _dropout_model(embedded_root, tmp_path)
    out = tmp_path / "out"
    result = run_script(PPO, "--model_name_or_path", str(folder), "--output_dir", str(out), "--steps", "2",
                        "--learning_rate", "1e-3", "--rollout_logprobs", source, "--fuse_lora", fuse, *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_json(out / "all_results.json")
    assert results["rollout_logprobs"] == source and results["fuse_lora"] == fuse
    if fuse == "on":  # every LoRA layer call of the update folded: 4 layers x 7 linear layers x 2 steps
        assert results["lora_update_calls"] == {"folded": 56, "products": 0, "peft": 0}
    elif fuse == "auto":  # the 192 x 512 MLP layers (3 of 7) cost more folded: PEFT's products in one function
        calls = results["lora_update_calls"]
        assert calls["products"] >= 24 and calls["peft"] == 0 and sum(calls.values()) == 56, calls
    history = _history(out)
    for step in history:
        if source == "forward":
            assert step["val/ratio"] == 1.0 and step["policy/approxkl"] == 0.0 and step["policy/policykl"] == 0.0
        else:
            assert step["val/ratio"] == pytest.approx(1.0, abs=1e-5) and step["val/ratio_var"] < 1e-9
            assert abs(step["policy/approxkl"]) < 1e-9 and step["policy/clipfrac"] == 0.0
    assert [step["lr"] for step in history] == pytest.approx([1e-3, 5e-4])


@pytest.mark.slow
@pytest.mark.parametrize("large", ["policykl", "approxkl"])
def test_early_stopping_reads_policykl(monkeypatch, embedded_root, tmp_path, large):
    """With the stats forced apart (one estimate far above 1.5 x --target_kl, the other 0), only a large
    policykl stops a step's epochs after its first optimizer step."""
    from rlhfkit.ppo import core

    real = core.policy_loss

    def forced(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        stats = {**stats, "policykl": torch.tensor(0.0), "approxkl": torch.tensor(0.0)}
        stats[large] = torch.tensor(10.0)
        return loss, stats

    monkeypatch.setattr(core, "policy_loss", forced)
    script = load_script("ppo.py")
    out = tmp_path / "out"
    summary = script.cli(["--output_dir", str(out), "--steps", "2", "--early_stopping", "True", "--target_kl", "0.1",
                          "--ppo_epochs", "2", *SMALL[:4], "--mini_batch_size", "2", *SMALL[6:]])
    stopped = summary["early_stopped_steps"]
    assert stopped == (2 if large == "policykl" else 0), summary


@pytest.mark.slow
def test_bad_batch_count_survives_a_resume(embedded_root, tmp_path):
    """--max_bad_batches 1: one NaN batch before the checkpoint and one after the resume make two, one too many."""
    def rule(name: str, bad_calls: str) -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(f"calls = 0\n\ndef score(prompt, response):\n    global calls\n    calls += 1\n"
                        f"    return float('nan') if {bad_calls} else 1.0\n")
        return f"{path}:score"

    out = tmp_path / "out"
    base = [sys.executable, PPO, "--output_dir", str(out), "--steps", "4", "--max_bad_batches", "1", *SMALL[2:]]
    # step 2 (calls 5-8) is NaN: skipped, 1 of 1; checkpoint-2 holds the count
    first = subprocess.run([*base, "--reward_function", rule("first", "5 <= calls <= 8"), "--save_steps", "2"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "batch skipped (1 of --max_bad_batches 1)" in first.stderr
    # resumed at step 2, step 3 (the first 4 calls of this process) is NaN: the second bad batch stops the run
    second = subprocess.run([*base, "--reward_function", rule("second", "calls <= 4"), "--resume_from_checkpoint",
                             str(out / "checkpoint-2")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss became NaN or infinite at step 3 (2 bad batch(es)"), last


@pytest.mark.slow
def test_truncated_sampling_is_refused(tmp_path):
    for flags in (["--top_k", "5"], ["--top_p", "0.9"]):
        out = tmp_path / "out"
        result = run_script(PPO, "--reward_function", "toy", "--output_dir", str(out), *flags)
        assert_user_error(result, "PPO samples from the full distribution", "Drop --top_k/--top_p")
        assert not out.exists()
    # the neutral values TRL's and optimum-habana's commands pass are accepted (validation only: --help-free check)
    from rlhfkit.ppo.config import PPOArguments

    PPOArguments(reward_function="toy", top_k=0, top_p=1.0).validate()


def test_comparison_reports_no_kl_for_truncated_sampling():
    from rlhfkit import compare

    class Loaded:
        pass

    reason = compare.kl_unavailable(Loaded(), Loaded(), compare.SamplingSettings(top_k=5))
    assert reason and "top-k/top-p" in reason


def test_trl_names_map_to_ours_and_say_so(caplog):
    """--response_length (TRL's name) sets --output_max_length, with a log line; the two disagreeing is an error."""
    import logging

    from rlhfkit.errors import UserError
    from rlhfkit.ppo.config import PPOArguments

    with caplog.at_level(logging.INFO):
        assert PPOArguments(response_length=20).output_max_length == 20
    assert "--response_length 20 (TRL's name) sets --output_max_length 20" in caplog.text
    assert PPOArguments(response_length=20, output_max_length=20).output_max_length == 20
    with pytest.raises(UserError, match="--response_length 20 and --output_max_length 30 disagree"):
        PPOArguments(response_length=20, output_max_length=30)


def test_traced_rollout_logprobs_need_batched_generation():
    from rlhfkit.errors import UserError
    from rlhfkit.ppo.config import PPOArguments

    with pytest.raises(UserError, match="--rollout_logprobs generation .* --batched_gen False"):
        PPOArguments(reward_function="toy", rollout_logprobs="generation", batched_gen=False).validate()
    PPOArguments(reward_function="toy", rollout_logprobs="auto", batched_gen=False).validate()  # auto: forward


@pytest.mark.slow
def test_lean_decoding_samples_what_generate_samples(embedded_root, tmp_path):
    """Full fine-tuning (no adapter to merge, so every rollout qualifies): ``--lean_decode auto`` samples with the
    lean loop, and the run is the one ``--lean_decode off`` makes: the same scores and KL step by step."""
    runs = {}
    for mode in ("auto", "off"):
        out = tmp_path / mode
        result = run_script(PPO, "--output_dir", str(out), "--steps", "2", "--use_peft", "False",
                            "--lean_decode", mode, *SMALL)
        assert result.returncode == 0, result.stderr[-3000:]
        results = read_json(out / "all_results.json")
        assert results["rollout_decoding"] == ({"lean": 2, "generate": 0} if mode == "auto"
                                               else {"lean": 0, "generate": 2})
        runs[mode] = [value for step in _history(out) for value in (step["objective/scores"], step["objective/kl"])]
    assert len(runs["auto"]) == 4
    assert runs["auto"] == pytest.approx(runs["off"], abs=1e-4)
