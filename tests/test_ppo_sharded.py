"""ppo.py sharded: 2 CPU processes under DeepSpeed ZeRO-2/3 and FSDP2 (configs/accelerate/cpu_zero2.yaml,
cpu_zero3.yaml, cpu_fsdp2.yaml) against DDP on the same 2 processes (cpu_2proc.yaml), as a user launches them.

Why DDP on 2 processes is the yardstick and not 1 process: each process samples with its own seed (seed + rank),
so a single process with the same global batch samples other responses and only agrees statistically (that
comparison is test_ppo.py's test_two_processes_agree_with_one). With the same sampling a sharded run must compute
the same thing as DDP: the same rollout, the same averaged gradients, the same Adam steps. Measured (stories260K,
LoRA, rule reward, 4 steps of 16 episodes, 4 PPO epochs): the logged metrics agree to a relative 3.7e-6 (ZeRO-2),
5.4e-6 (ZeRO-3) and 3.1e-6 (FSDP2), the adapter weights to 4.5e-8, 3.2e-7 and 2.2e-8 absolute (|w| <= 0.13); full fine-tuning with a
reward-model critic under ZeRO-3: metrics to 1.3e-4 relative, weights to 6e-8 (|w| <= 4.4). TOLERANCES sit ~8x and
~30x above the worst of these and far below what a real difference gives: FSDP2 sharding each process's own random
LoRA initialisation (a bug this file caught) put the adapter weights 0.25 apart and the step-2 KL 20% apart.

Also checked: the saved model loads with ``from_pretrained``; checkpoints hold accelerate's sharded state; a ZeRO-3
run killed (SIGKILL of the whole launch) after its step-2 checkpoint and resumed with ``last`` ends as the
uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, read_json
from test_ppo import STORIES, _stories_args, stories, stories_reward_model

SHARED_FIXTURES = (stories, stories_reward_model)  # test_ppo.py's, used here by name

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
CONFIGS = REPO / "configs" / "accelerate"
PPO = str(REPO / "ppo.py")
LAYOUTS = {"ddp": ("cpu_2proc.yaml", "ddp"), "zero2": ("cpu_zero2.yaml", "deepspeed-zero2"),
           "zero3": ("cpu_zero3.yaml", "deepspeed-zero3"), "fsdp2": ("cpu_fsdp2.yaml", "fsdp2")}
STEPS = 4
# --lean_decode off: sharded parameters sample with transformers' generate (the lean loop needs whole weights), so
# the DDP reference samples the same way; this file compares the sharding, not the decoding (whose own tests are
# tests/test_lean_decode.py: the same tokens to float rounding, which can flip a sampled token now and then)
COMMON = ["--steps", str(STEPS), "--batch_size", "8", "--mini_batch_size", "4", "--learning_rate", "1e-3",
          "--save_steps", "2", "--save_merged", "False", "--seed", "7", "--device", "cpu", "--lean_decode", "off"]
TOLERANCES = {"metric": 1e-3, "weights": 1e-5}
METRICS = ("objective/scores", "objective/kl", "loss/policy", "loss/value", "policy/approxkl", "policy/grad_norm")


def _needs_deepspeed():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed (make install installs it)")


def _launch(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), PPO, *args]


def _run(config: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(_launch(config, *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def _history(out: Path) -> list[dict]:
    return read_json(out / "trainer_state.json")["log_history"]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_training(a: Path, b: Path, weights_file: str) -> None:
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb) == STEPS
    for x, y in zip(ha, hb, strict=True):
        for key in METRICS:
            assert y[key] == pytest.approx(x[key], rel=TOLERANCES["metric"], abs=1e-6), (key, x["step"], x[key], y[key])
    wa, wb = _weights(a / weights_file), _weights(b / weights_file)
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < TOLERANCES["weights"], worst
    lora_b = [k for k in wa if "lora_B" in k]  # zero at the start: nonzero once trained
    assert not lora_b or any(wa[k].abs().max().item() > 0 for k in lora_b)


@pytest.fixture(scope="module")
def lora_runs(stories):
    """The same LoRA run (rule reward, value head) under DDP, ZeRO-2, ZeRO-3 and FSDP2, 2 processes each."""
    _needs_deepspeed()
    folder, prompts, rule = stories
    runs = {}
    for layout, (config, _) in LAYOUTS.items():
        out = folder / f"sharded-{layout}"
        started = time.monotonic()
        result = _run(config, *_stories_args(prompts, rule), *COMMON, "--output_dir", str(out))
        print(f"ppo.py {layout} x 2 processes: {time.monotonic() - started:.1f} s")
        runs[layout] = (result, out)
    return runs


@pytest.mark.parametrize("layout", ["zero2", "zero3", "fsdp2"])
def test_sharded_lora_run_matches_ddp(lora_runs, layout):
    (ddp, ddp_out), (run, out) = lora_runs["ddp"], lora_runs[layout]
    assert_ok(ddp)
    assert_ok(run)
    assert run.stderr.count("PPO on cpu x 2 process(es)") == 1
    results = read_json(out / "all_results.json")
    assert results["distributed"] == LAYOUTS[layout][1] and read_json(ddp_out / "all_results.json")["distributed"] == "ddp"
    assert len(results["peak_rss_mib_per_process"]) == 2 and min(results["peak_rss_mib_per_process"]) > 0
    _assert_same_training(ddp_out, out, "adapter_model.safetensors")


@pytest.mark.parametrize("layout", ["zero3", "fsdp2"])
def test_sharded_checkpoint_and_saved_adapter(lora_runs, stories, layout):
    """Checkpoints hold accelerate's sharded state (no whole-weights file); the final adapter is one safetensors
    file that PEFT loads onto stories260K, and the loaded weights are the saved ones."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    result, out = lora_runs[layout]
    assert_ok(result)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "sharded").is_dir() and not (checkpoint / "trainable.safetensors").exists()
    assert read_json(checkpoint / "ppo_state.json")["layout"] == LAYOUTS[layout][1]
    assert [p.name for p in out.rglob("adapter_model.safetensors")] == ["adapter_model.safetensors"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(STORIES)), str(out))
    saved, loaded = _weights(out / "adapter_model.safetensors"), get_peft_model_state_dict(model)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k].detach()) for k in saved)


def test_zero3_resume_after_kill_ends_like_an_uninterrupted_run(lora_runs, stories):
    """Kill the whole ZeRO-3 launch (SIGKILL to its process group) once the step-2 checkpoint exists, resume with
    ``last``: the same metrics per step and the same final adapter as the uninterrupted ZeRO-3 run."""
    whole_result, whole = lora_runs["zero3"]
    assert_ok(whole_result)
    folder, prompts, rule = stories
    killed = folder / "sharded-zero3-killed"
    args = [*_stories_args(prompts, rule), *COMMON, "--output_dir", str(killed)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_launch("cpu_zero3.yaml", *args), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while not (killed / "checkpoint-2" / "ppo_state.json").exists() and process.poll() is None:
        assert time.time() < deadline, "no checkpoint-2 after 15 minutes"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter_config.json").exists()
    resumed = _run("cpu_zero3.yaml", *args, "--resume_from_checkpoint", "last")
    assert_ok(resumed)
    assert "resumed from" in resumed.stderr
    _assert_same_training(whole, killed, "adapter_model.safetensors")


def test_zero3_full_fine_tuning_with_a_reward_model_matches_ddp(stories, stories_reward_model):
    """Full fine-tuning (a frozen reference) scored by a reward model, the critic a trained copy of it: under ZeRO-3
    the reference and the reward model are DeepSpeed inference engines (sharded, not replicated); the result is the
    DDP run's, and the saved policy is one safetensors model that transformers loads."""
    from transformers import AutoModelForCausalLM

    _needs_deepspeed()
    folder, prompts, _ = stories
    args = ["--model_name_or_path", str(STORIES), "--dataset_name", str(prompts), "--prompt_format", "raw",
            "--reward_model_name", stories_reward_model, "--output_max_length", "24", "--report_to", "none",
            "--sample_every", "0", "--use_peft", "False", "--learning_rate", "1e-5",
            *[a for a in COMMON if a not in ("--learning_rate", "1e-3")]]
    outs = {}
    for layout in ("ddp", "zero3"):
        out = folder / f"sharded-full-{layout}"
        result = _run(LAYOUTS[layout][0], *args, "--output_dir", str(out))
        assert_ok(result)
        assert "reference: frozen copy, critic: a trained copy of the reward model" in result.stderr
        outs[layout] = out
    assert read_json(outs["zero3"] / "all_results.json")["distributed"] == "deepspeed-zero3"
    _assert_same_training(outs["ddp"], outs["zero3"], "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(str(outs["zero3"]))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("layout", ["zero3", "fsdp2"])
def test_bf16_full_fine_tuning_with_a_value_head_runs_sharded(stories, layout):
    """bf16 (the GPU configs' precision) with full fine-tuning: the policy's weights are bf16 and the value head was
    float32, which ZeRO-3 refused (one dtype per parameter group) and FSDP2's bf16 compute broke (a float32 input
    to a bf16 head); first seen on an H200, reproduced here with accelerate's --mixed_precision bf16 on 2 CPU
    processes. Under ZeRO-3 the head now takes the policy's dtype (DeepSpeed keeps float32 master weights); under
    FSDP2 the policy itself is float32 (ppo.py's bf16 full fine-tuning: float32 weights, bf16 autocast), and
    the run trains."""
    if layout.startswith("zero"):
        _needs_deepspeed()
    folder, prompts, rule = stories
    out = folder / f"sharded-bf16-{layout}"
    config = CONFIGS / LAYOUTS[layout][0]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [*_stories_args(prompts, rule), "--use_peft", "False", "--learning_rate", "1e-5", "--bf16", "True",
            "--steps", "2", "--batch_size", "4", "--mini_batch_size", "2", "--save_merged", "False",
            "--device", "cpu", "--output_dir", str(out)]
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                             "--mixed_precision", "bf16", PPO, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    assert_ok(result)
    expected = {"zero3": "value head in bfloat16 like the policy's weights (was float32)",
                "fsdp2": "float32 weights (every update kept)"}[layout]
    assert expected in result.stderr
    results = read_json(out / "all_results.json")
    assert results["distributed"] == LAYOUTS[layout][1] and results["train_steps"] == 2
    history = _history(out)
    assert len(history) == 2 and all(math.isfinite(entry["loss/value"]) for entry in history)
