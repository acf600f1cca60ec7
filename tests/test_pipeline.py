"""ppo_pipeline_sanity.sh, the product's main job, end to end on the embedded default with reduced steps.

One run is killed (SIGKILL to the whole process group) once PPO has written a checkpoint; the rerun must skip
the finished stages, resume PPO from that checkpoint, and finish with a comparison in which PPO is above the
base on the reward model *and* on the gold judge (the script itself fails otherwise on the toy profile). The run
has ``--with-grpo``: GRPO (grpo.py) from the same SFT model against the same reward model, with the default
pipeline's 960 episodes, must end above the base *and* the SFT model on the gold judge, no model of which any stage
saw, with its KL from the base reported.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = str(REPO / "ppo_pipeline_sanity.sh")


def _env(work: Path, **extra) -> dict:
    return {
        **os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", "WORKDIR": str(work),
        "LOG": str(work / "pipeline.log"), "PIPELINE_PROFILE": "toy", **extra,
    }


def _ppo_checkpoint(work: Path) -> Path | None:
    from rlhfkit.ppo.trainer import newest_checkpoint

    found = newest_checkpoint(str(work / "ppo")) if (work / "ppo").is_dir() else None
    return Path(found) if found else None


@pytest.mark.slow
def test_pipeline_killed_mid_ppo_resumes_there_and_ppo_beats_the_base(embedded_root, tmp_path):
    work = tmp_path / "work"
    env = _env(work, SFT_STEPS="200", RM_EPOCHS="1", PPO_STEPS="16", PPO_SAVE_STEPS="4", NUM_SAMPLES="100",
               WITH_GRPO="1", GRPO_STEPS="120")
    first_out = tmp_path / "first.out"
    with open(first_out, "w") as handle:
        first = subprocess.Popen(["bash", SCRIPT], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 1500
        while first.poll() is None and _ppo_checkpoint(work) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        finished_early = first.poll() is not None
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not finished_early, first_out.read_text()[-3000:]
    checkpoint = _ppo_checkpoint(work)
    assert checkpoint is not None, first_out.read_text()[-3000:]
    assert not (work / "ppo" / ".stage_done").exists()

    second = subprocess.run(["bash", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    for stage in ("sft", "merge_sft", "reward_model"):
        assert f"stage {stage}: already done" in log, stage
    # the toy profile trains its reward model in full: PPO and the comparison use it as it is, nothing to merge
    assert "stage merge_rm" not in log and not (work / "rm_merged").exists()
    assert not (work / "rm" / "adapter_config.json").exists()
    assert f"stage ppo: resuming from {checkpoint}" in log
    assert "sanity check passed" in log

    # every PPO step logged once over the two runs, the episodes of the steps after the checkpoint not twice
    with open(work / "ppo" / "training_log.csv", encoding="utf-8") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert sorted(set(steps)) == list(range(1, 17)) and len(steps) == 16 * 32
    summary = json.loads((work / "comparison" / "comparison.json").read_text())
    models = summary["models"]
    assert set(models) == {"base", "sft", "finetuned"}
    assert models["finetuned"]["reward"]["mean"] > models["base"]["reward"]["mean"]
    assert models["finetuned"]["gold"]["mean"] > models["base"]["gold"]["mean"]
    win = summary["win_rates"]["finetuned_vs_base"]
    # more often higher prompt by prompt, not just on average (the lower end of the interval is not asked for: with
    # 16 PPO steps the toy reward model already scores the base near its ceiling on some processors, e.g. an AMD EPYC
    # where it was measured at 0.49-0.67)
    assert win["reward"]["win_rate"] > 0.5, win
    assert 0 < models["finetuned"]["kl_from_base"]["mean"] < 20
    assert summary["settings"]["num_prompts"] == 100 and summary["settings"]["generations_per_prompt"] == 2
    assert (work / "comparison" / "comparison.png").stat().st_size > 10_000
    assert (work / "generation" / "generations.jsonl").is_file()
    assert "RLHF result: reward: base" in log
    assert (work / "logs" / "ppo.log").is_file() and "resuming" in (work / "pipeline.log").read_text()

    # GRPO, from the same SFT model against the same reward model, with the default pipeline's 120 steps of 8
    # episodes: with PPO's 16 x 32 here (64 steps) its gold gain over the SFT model was -0.05 to +0.26 over machines
    # and seeds, too close to zero to assert; with 960, +0.19 to +0.40 (bench/results/cpu-2026-12-03-critic-free.md)
    grpo = json.loads((work / "comparison_grpo" / "comparison.json").read_text())["models"]
    assert set(grpo) == {"base", "sft", "finetuned"}
    assert grpo["finetuned"]["gold"]["mean"] > grpo["base"]["gold"]["mean"], grpo
    assert grpo["finetuned"]["gold"]["mean"] > grpo["sft"]["gold"]["mean"], grpo
    assert grpo["finetuned"]["reward"]["mean"] > grpo["sft"]["reward"]["mean"], grpo
    assert 0 < grpo["finetuned"]["kl_from_base"]["mean"] < 20
    assert json.loads((work / "grpo" / "all_results.json").read_text())["train_episodes"] == 120 * 8
    assert "GRPO result: reward: base" in log and "KL(GRPO || base)" in log


@pytest.mark.slow
def test_a_failing_stage_is_named_with_the_end_of_its_log(embedded_root, tmp_path):
    work = tmp_path / "work"
    result = subprocess.run(["bash", SCRIPT], cwd=REPO, env=_env(work, DATASET=str(tmp_path / "no-such-data")),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "stage sft FAILED" in output and f"{work}/logs/sft.log" in output
    assert "error: dataset path" in result.stderr.split("stage sft FAILED")[-1]  # the tail of the stage's log
    assert not (work / "sft" / ".stage_done").exists() and not (work / "sft_merged").exists()


def test_bad_knobs_are_refused_before_any_work(tmp_path):
    for env, message in (({"PPO_STEPS": "ten"}, "PPO_STEPS=ten is not a positive whole number"),
                         ({"DEVICE": "tpu"}, "DEVICE=tpu is not auto, cpu, cuda or hpu"),
                         ({"PIPELINE_PROFILE": "huge"}, "--profile huge is not toy, optimum-habana or quick")):
        result = subprocess.run(["bash", SCRIPT], cwd=REPO, env={**_env(tmp_path / "w"), **env},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = subprocess.run(["bash", SCRIPT, "--frobnicate"], cwd=REPO, env=_env(tmp_path / "w"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr
    assert not (tmp_path / "w").exists()
