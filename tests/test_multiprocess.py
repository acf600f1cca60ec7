"""The Trainer-based scripts (sft, reward_modeling, dpo) under `accelerate launch` with 2 processes, and the
accelerate config files in configs/accelerate/.

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes 2` (or configs/accelerate/
cpu_2proc.yaml, which says the same) starts 2 CPU processes that train with DDP over gloo; `--cpu` would
start only one without MPI. Each script runs twice on the embedded tiny Llama with LoRA: one process with
8 rows per device, then 2 processes with 4 each, the same global batch of 8, seed and steps. Checked:

* the same training: every logged step's loss agrees (TOLERANCES, measured), so the 2 processes saw the same
  global batches in the same order, and the final train_loss and adapter weights agree;
* one writer: only the main process publishes the model and writes the result files, and the output folder
  holds one adapter_model.safetensors;
* one speaker: each characteristic INFO line of the script appears once in the 2-process log, not twice.

Writes and publishes are observed with a sitecustomize probe (PROBE) that wraps rlhfkit.io's writers in
every process and prints the rank on stderr; the scripts themselves are unchanged. LoRA dropout is 0 so
that the two runs are comparable step by step (dropout masks depend on the process layout).

The DDP, FSDP, DeepSpeed ZeRO-2/3 and Gaudi configs cannot run here (no GPU, no DeepSpeed, no Gaudi): their
test only checks that accelerate 1.15 accepts them (known distributed_type, every key one accelerate reads,
the launch environment it builds from them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, read_json, run_script

CONFIGS = REPO / "configs" / "accelerate"
EXPECTED_TYPES = {"cpu_2proc.yaml": "MULTI_GPU", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
                  "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED", "gaudi_ddp.yaml": "MULTI_HPU"}
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True", "--report_to", "none"]
# fp32: the comparison of 1 and 2 processes is to a few ulps, which bf16 autocast (the CPU default here) blurs
COMMON = ["--max_steps", "3", "--logging_steps", "1", "--lora_dropout", "0", "--seed", "7", "--device", "cpu",
          "--bf16", "False", *QUIET]
GLOBAL_BATCH = 8
SCRIPTS = {
    # script: (flags, per-device flags scaled with the process count, INFO lines that must appear once)
    "sft": (["--do_train", "--max_train_samples", "64", "--learning_rate", "2e-3"],
            ["--per_device_train_batch_size"],
            ["INFO sft: training rows:", "INFO sft: model ", "INFO sft: done:"]),
    "reward_modeling": (["--train_subset", "64", "--eval_subset", "16", "--learning_rate", "5e-3"],
                        ["--per_device_train_batch_size"],
                        ["INFO rlhfkit.pairs: training pairs:", "INFO reward_modeling: model ",
                         "INFO reward_modeling: held-out pairs:"]),
    "dpo": (["--train_subset", "64", "--eval_subset", "16", "--learning_rate", "2e-3", "--beta", "0.1"],
            ["--per_device_train_batch_size", "--per_device_eval_batch_size"],
            ["INFO rlhfkit.pairs: training pairs:", "INFO rlhfkit.preference_training: policy ",
             "INFO rlhfkit.preference_training: held-out pairs:"]),
}
# The same global batch gives the same training up to float reduction order (a batch padded to 4 rows instead of
# 8, a 2-way gradient all-reduce, 1 thread instead of 2). Measured, 1 vs 2 processes, 3 steps: per-step loss and
# grad_norm and train_loss agree to a relative 1.4e-7 at worst (sft: bit for bit), adapter weights to 3.3e-5
# absolute (|w| <= 0.08). The tolerances sit ~1000x and ~30x above that and far below what a lost gradient
# all-reduce gives (measured on dpo.py with LoRA under TRL 1.16, whose adapter-disabled reference forward loses
# it: grad_norm off by 25% at step 1, loss by 2.5% at step 2, weights by 8e-3). Weights get more room: Adam's first steps move each weight by about +-lr whatever the
# gradient's size, so float noise in a near-zero gradient moves a weight by more than it moves a loss.
TOLERANCES = {"step": 1e-4, "weights": 1e-3}
# the command the tests run; sft and reward_modeling spell the flags out, dpo goes through cpu_2proc.yaml
LAUNCH_FLAGS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", "0"]
LAUNCH_CONFIG = ["--config_file", str(CONFIGS / "cpu_2proc.yaml")]

PROBE = '''"""Test probe: report every rlhfkit.io write and publish with the rank of the process doing it."""
import os
import sys

if os.environ.get("RLHFKIT_PROBE_REPO"):
    sys.path.append(os.environ["RLHFKIT_PROBE_REPO"])
    import rlhfkit.io as _io

    _write_bytes, _publish = _io.write_bytes, _io.publish

    def _say(what):
        print(f"[probe] rank {os.environ.get('RANK', '0')} {what}", file=sys.stderr, flush=True)

    def write_bytes(path, payload):
        _say(f"writes {os.path.basename(path)}")
        return _write_bytes(path, payload)

    def publish(staging, final_dir):
        _say(f"publishes {' '.join(sorted(os.listdir(staging))) or '(nothing)'}")
        return _publish(staging, final_dir)

    _io.write_bytes, _io.publish = write_bytes, publish
    if "RANK" in os.environ:  # a process started by the launcher (the launcher itself has no RANK)
        _say("started")
'''


def _log_steps(out: Path) -> list[dict]:
    """The Trainer's per-step log entries (logging_steps 1), from trainer_state.json."""
    return [entry for entry in read_json(out / "trainer_state.json")["log_history"] if "loss" in entry]


def _probe_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[probe] ")]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def probe_env(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "RLHFKIT_PROBE_REPO": str(REPO)}


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def runs(request, embedded_root, probe_env, tmp_path_factory):
    """One script run as 1 process (batch 8 per device) and as 2 processes (4 per device), one after the other."""
    name = request.param
    flags, per_device, _ = SCRIPTS[name]
    script = str(REPO / f"{name}.py")
    folder = tmp_path_factory.mktemp(f"mp-{name}")
    one, two = folder / "one", folder / "two"

    def batch(size: int) -> list[str]:
        return [arg for flag in per_device for arg in (flag, str(size))]

    started = time.monotonic()
    single = run_script(script, "--output_dir", str(one), *flags, *COMMON, *batch(GLOBAL_BATCH), env=probe_env)
    single_s = time.monotonic() - started
    launch = LAUNCH_CONFIG if name == "dpo" else LAUNCH_FLAGS
    started = time.monotonic()
    double = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launch, script, "--output_dir", str(two), *flags,
         *COMMON, *batch(GLOBAL_BATCH // 2)],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **probe_env},
        capture_output=True, text=True, timeout=1800,
    )
    double_s = time.monotonic() - started
    print(f"{name}: 1 process {single_s:.1f} s, 2 processes {double_s:.1f} s")
    return {"name": name, "one": (single, one), "two": (double, two)}


# ------------------------------------------------------------------------------------------ 2 processes
@pytest.mark.slow
def test_both_runs_succeed_and_two_processes_ran(runs):
    (single, _), (double, _) = runs["one"], runs["two"]
    assert_ok(single)
    assert_ok(double)
    ranks = {line.split()[2] for line in _probe_lines(double.stderr) if line.endswith(" started")}
    assert ranks == {"0", "1"}, _probe_lines(double.stderr)  # both processes ran the script


def test_same_global_batches_give_the_same_training(runs):
    (single, one), (double, two) = runs["one"], runs["two"]
    assert_ok(single)
    assert_ok(double)
    steps_one, steps_two = _log_steps(one), _log_steps(two)
    assert len(steps_one) == len(steps_two) == 3
    # data order: step 1 sees the same rows in both layouts (the same untrained model, so the same token count and
    # log-probs; a DPO loss is log 2 at step 1 whatever the rows, hence the log-probs)
    first_one, first_two = steps_one[0], steps_two[0]
    assert first_two.get("num_tokens") == first_one.get("num_tokens")
    for key in ("loss", "logps/chosen", "logps/rejected"):
        if key in first_one:
            assert first_two[key] == pytest.approx(first_one[key], rel=TOLERANCES["step"]), key
    # gradients: the same global batch gives the same all-reduced gradient (its norm) and so the same next loss
    for key in ("grad_norm", "loss"):
        values_one, values_two = [e[key] for e in steps_one], [e[key] for e in steps_two]
        assert values_two == pytest.approx(values_one, rel=TOLERANCES["step"]), (key, values_one, values_two)
    train_one, train_two = read_json(one / "all_results.json"), read_json(two / "all_results.json")
    assert train_two["train_loss"] == pytest.approx(train_one["train_loss"], rel=TOLERANCES["step"])


def test_same_adapter_weights(runs):
    import torch
    from safetensors.torch import load_file

    (single, one), (double, two) = runs["one"], runs["two"]
    assert_ok(single)
    assert_ok(double)
    wa, wb = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < TOLERANCES["weights"], worst
    assert any(not torch.equal(wa[k], torch.zeros_like(wa[k])) for k in wa)


def test_main_process_alone_writes_the_model_and_results(runs):
    (double, two) = runs["two"]
    assert_ok(double)
    probes = _probe_lines(double.stderr)
    published = [line for line in probes if " publishes " in line and not line.endswith("(nothing)")]
    assert len(published) == 1 and published[0].startswith("[probe] rank 0 "), probes
    assert "adapter_model.safetensors" in published[0]
    for result_file in ("all_results.json", "train_results.json"):
        writers = [line for line in probes if line.endswith(f" writes {result_file}")]
        assert writers == [f"[probe] rank 0 writes {result_file}"], probes
    assert [p.name for p in two.rglob("adapter_model.safetensors")] == ["adapter_model.safetensors"]
    assert not list(two.parent.glob(f".{two.name}.saving-*"))  # no staging folder left behind
    assert "train_loss" in read_json(two / "all_results.json")


def test_main_process_alone_logs(runs):
    (single, _), (double, _) = runs["one"], runs["two"]
    assert_ok(single)
    assert_ok(double)
    for line in SCRIPTS[runs["name"]][2]:
        assert single.stderr.count(line) == 1, (line, single.stderr)
        assert double.stderr.count(line) == 1, (line, double.stderr)


# ----------------------------------------------------------------------------------------------- configs
def test_every_config_is_shipped():
    assert sorted(p.name for p in CONFIGS.iterdir()) == sorted(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_config_is_one_accelerate_accepts(name, monkeypatch):
    """Parsed by accelerate's own loader (which refuses unknown top-level keys), a known distributed_type, every
    nested deepspeed/fsdp key a launch option (accelerate copies them without a check, so a misspelt one would
    be ignored), and the launch environment built as `accelerate launch` builds it."""
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = CONFIGS / name
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ") and f"accelerate launch --config_file configs/accelerate/{name} " in text
    raw = yaml.safe_load(text)
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType(EXPECTED_TYPES[name])
    assert config.num_machines == 1 and config.num_processes >= 2

    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    for section, prefix in (("deepspeed_config", ""), ("fsdp_config", "fsdp_")):
        for key in raw.get(section) or {}:
            assert (key if key.startswith(prefix) else prefix + key) in options, f"{name}: {section}.{key}"

    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "sft.py"]))
    assert args.num_processes == config.num_processes
    if config.distributed_type == DistributedType.DEEPSPEED:
        args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
        stage = raw["deepspeed_config"]["zero_stage"]
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"
        if stage == 3:
            assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
            assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
        return
    env = prepare_multi_gpu_env(args)
    if config.distributed_type == DistributedType.FSDP:
        from accelerate.utils import FullyShardedDataParallelPlugin

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()  # reads the launch environment, validating each value
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # a sharded one: save_model writes no model
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
