"""The benchmark suite (bench/): its arithmetic, and a smoke run on the tiny setting that must write valid JSON and
Markdown. No speed is asserted anywhere: figures are the benchmark's output, not a test's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import report  # noqa: E402
import run as bench_run  # noqa: E402
import sharded_memory  # noqa: E402
import trainer_probe  # noqa: E402


def test_steady_throughput_skips_the_warmup_steps():
    record = {"step_seconds": [10.0, 1.0, 2.0, 1.0], "step_tokens": [999, 100, 300, 100], "step_rows": [8, 8, 8, 8]}
    got = bench_run.steady(record, warmup=1)
    assert got["steps_timed"] == 3
    assert got["tokens_per_second"] == pytest.approx(500 / 4.0)
    assert got["rows_per_second"] == pytest.approx(24 / 4.0)
    assert got["step_seconds"] == 1.0  # the median
    assert got["warmup_seconds"] == 10.0  # the untimed step, reported (with --torch_compile: the compiling)


def test_each_side_s_sft_args_reach_that_side_only():
    args = bench_run.parse_args(["--device", "cpu", "--setup", "quick", "--ours_sft_args", "--torch_compile True",
                                 "--trl_sft_args", "--bf16 False"])
    suite = bench_run.Suite(args)
    inp = {"model": {"path": "M"}, "data": {"ours": "D1", "trl": "D2"}}
    for lora in (False, True):
        cmds = suite.sft_commands(inp, 0, lora)
        assert cmds["ours"][-2:] == ["--torch_compile", "True"] and "--bf16" not in cmds["ours"]
        assert cmds["trl"][-2:] == ["--bf16", "False"] and "--torch_compile" not in cmds["trl"]
        assert ("--use_peft" in cmds["trl"]) is lora


def test_trl_sft_runs_in_float32_on_a_cpu_without_native_bf16_unless_told(monkeypatch):
    """TRL's bf16=True default would be emulated (unusably slow) on such a CPU: its side gets --bf16 False, said in
    the results; a CPU with AMX / AVX512-BF16, a GPU, or a --bf16 the user gave keeps TRL's flags as they are."""
    from rlhfkit import device

    def trl_args(feature, *argv):
        monkeypatch.setattr(device, "cpu_bf16_feature", lambda: feature)
        args = bench_run.parse_args(["--setup", "quick", *argv])
        return args.trl_sft_args, args.trl_sft_note

    flags, note = trl_args(None, "--device", "cpu")
    assert flags == "--bf16 False" and "emulated" in note
    assert trl_args(None, "--device", "cpu", "--trl_sft_args", "--max_length 64")[0] == "--max_length 64 --bf16 False"
    assert trl_args(None, "--device", "cpu", "--trl_sft_args", "--bf16 True") == ("--bf16 True", None)
    assert trl_args(None, "--device", "cpu", "--trl_sft_args=--bf16=True") == ("--bf16=True", None)
    assert trl_args("amx_bf16", "--device", "cpu") == ("", None)
    assert trl_args(None, "--device", "cuda") == ("", None)
    assert trl_args(None, "--device", "cpu", "--stages", "ppo") == ("", None)  # no trl sft to run
    monkeypatch.setattr(device, "cpu_bf16_feature", lambda: None)
    suite = bench_run.Suite(bench_run.parse_args(["--device", "cpu", "--setup", "quick"]))
    inp = {"model": {"path": "M"}, "data": {"ours": "D1", "trl": "D2"}}
    assert suite.sft_commands(inp, 0)["trl"][-2:] == ["--bf16", "False"]


def test_spread_and_run_by_run_ratios():
    assert bench_run.spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert bench_run.spread([None]) is None
    runs = {"ours": [{"t": 4.0}, {"t": 6.0}, {"t": 3.0}], "trl": [{"t": 2.0}, {"t": 2.0}, {"t": 3.0}]}
    ratio = bench_run.Suite.ratios(runs, ["t"], [("ours", "trl")])["ours/trl"]["t"]
    assert ratio == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}  # 2, 3, 1: pairwise, not medians' ratio


def test_summary_keeps_numbers_and_time_shares():
    runs = {"ours": [{"eps": 2.0, "precision": "bf16", "time_shares": {"generation": 0.5, "update": 0.5}},
                     {"eps": 4.0, "precision": "bf16", "time_shares": {"generation": 0.7, "update": 0.3}}]}
    summary = bench_run.Suite.summarise(runs)["ours"]
    assert summary["eps"]["median"] == 3.0
    assert "precision" not in summary
    assert summary["time_shares"] == {"generation": pytest.approx(0.6), "update": pytest.approx(0.4)}


def test_targets_judge_medians():
    stages = {"sft": {"model": {"parameters": 40e6},
                      "ratios": {"ours/trl": {"tokens_per_second": {"median": 2.1}},
                                 "ours/bare": {"tokens_per_second": {"median": 0.7}}},
                      "summary": {"ours": {"eval_loss": {"median": 4.0}, "mfu": {"median": 0.3}},
                                  "trl": {"eval_loss": {"median": 3.98}}}}}
    got = {t["what"].split(",")[0]: (t["target"], t["met"]) for t in bench_run.targets(stages, "cpu")}
    assert got == {"SFT non-padding tokens/s": (">= 2.0x", True), "SFT tokens/s": (">= 0.8x", False),
                   "SFT held-out loss": ("no worse (within 1%)", True),  # 4.0 <= 1.01 * 3.98
                   "SFT MFU (cpu": (">= 0.5", False)}
    stages["sft"]["summary"]["trl"]["eval_loss"]["median"] = 3.9  # 4.0 > 1.01 * 3.9
    assert [t["met"] for t in bench_run.targets(stages, "cpu") if "loss" in t["what"]] == [False]
    # the LoRA stage: the same throughput and loss targets, no bare loop and no MFU target of its own
    stages["sft_lora"] = {"model": {"parameters": 40e6}, "ratios": {"ours/trl": {"tokens_per_second": {"median": 1.2}}},
                          "summary": {"ours": {"eval_loss": {"median": 5.0}}, "trl": {"eval_loss": {"median": 5.5}}}}
    lora = [(t["what"].split(",")[0], t["met"]) for t in bench_run.targets(stages, "cpu") if "LoRA" in t["what"]]
    assert lora == [("SFT with LoRA non-padding tokens/s", False), ("SFT with LoRA held-out loss", True)]


def test_ppo_targets_are_the_performance_issues():
    """2.5x TRL 1.12's episodes/s on the small setting, 2x on 100M, at most 0.5x its memory on 100M."""
    def setting(eps, memory):
        return {"ratios": {"ours/trl": {"episodes_per_second": {"median": eps}, "peak_memory_bytes": {"median": memory}}}}

    got = {t["what"]: (t["target"], t["met"])
           for t in bench_run.targets({"ppo": {"small": setting(2.2, 0.6), "100m": setting(2.1, 0.45)}}, "cpu")}
    assert got == {"PPO episodes/s, ours / TRL 1.12 (small)": (">= 2.5x", False),
                   "PPO episodes/s, ours / TRL 1.12 (100m)": (">= 2.0x", True),
                   "PPO peak memory, ours / TRL 1.12 (100M)": ("<= 0.5x", True)}


def test_learning_targets_take_trls_best_row():
    """ours with its defaults against the better of TRL's rows, per 100 episodes and per minute."""
    def row(engine, gold_ep, gold_min, reward_ep, reward_min):
        return {"engine": engine, "gold_gain_per_100_episodes": gold_ep, "gold_gain_per_minute": gold_min,
                "reward_gain_per_100_episodes": reward_ep, "reward_gain_per_minute": reward_min}

    results = {"defaults": row("ppo.py", 0.13, 1.0, 0.9, 1.8),
               "TRL, its defaults": row("TRL 1.12.0", 0.01, 0.1, 0.05, 0.1),
               "TRL, 3e-5": row("TRL 1.12.0", 0.11, 0.8, 1.0, 0.9)}
    got = {t["what"].split(",")[0]: (t["measured"], t["met"])
           for t in bench_run.targets({"learning": {"results": results}}, "cpu")}
    assert got == {"PPO gold gain per 100 episodes": ([0.13, 0.11], True),
                   "PPO gold gain per minute": (pytest.approx(1.25), False),
                   "PPO reward gain per 100 episodes": ([0.9, 1.0], False),
                   "PPO reward gain per minute": (pytest.approx(2.0), True)}
    assert bench_run.targets({"learning": {"results": {"defaults": results["defaults"]}}}, "cpu") == []


def test_report_cells():
    assert report.cell({"median": 1234.5, "min": 1000.0, "max": 1500.0, "n": 3}) == "1,234 (1,000-1,500)"
    assert report.cell({"median": 0.5, "min": 0.5, "max": 0.5, "n": 3}, "x") == "0.50x"
    assert report.cell({"median": 2**30, "min": 2**30, "max": 2**30, "n": 1}, "MiB") == "1,024 MiB"
    assert report.cell(None) == "-"


def test_probe_counts_rows_and_non_padding_tokens():
    import torch

    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0, 0],
                                                                                             [1, 1, 1, 1, 1]]),
             "labels": torch.ones(2, 5, dtype=torch.long)}
    assert trainer_probe._count(batch) == (2, 8)
    padding_free = {"input_ids": torch.ones(1, 7, dtype=torch.long), "position_ids": torch.arange(7)[None]}
    assert trainer_probe._count(padding_free) == (1, 7)


def test_bare_loop_groups_rows_by_length_like_the_trainer():
    import bare_loop

    rows = [[0] * n for n in (5, 50, 7, 48, 6, 49, 8, 47)]
    batches = bare_loop.batches(rows, batch_size=2, steps=6, group=True, seed=0)
    assert len(batches) == 6
    first_epoch = [i for b in batches[:4] for i in b]
    assert sorted(first_epoch) == list(range(8))  # one epoch covers every row once
    assert max(len(rows[i]) for i in batches[0]) == 50  # the longest row's batch comes first, as in transformers


@pytest.mark.slow
def test_suite_smoke_run_writes_valid_json_and_markdown(tmp_path):
    """bench/run.py on the tiny setup, one run per side, PPO without the TRL 1.12 venv: every stage runs and the
    result files hold the machine, the versions and positive, finite figures."""
    out, work = tmp_path / "results", tmp_path / "work"
    done = subprocess.run([sys.executable, "bench/run.py", "--setup", "quick", "--device", "cpu", "--repeats", "1",
                           "--no_peers", "--out", str(out), "--work", str(work)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) == 2 and files[0].startswith("cpu-") and files[0].endswith("-quick.json"), files
    results = json.loads((out / files[0]).read_text())
    assert set(results["stages"]) == {"sft", "sft_lora", "reward", "dpo", "ppo", "generation"}
    assert results["machine"]["usable_cores"] >= 1 and results["versions"]["torch"]
    assert results["peak_matmul"] and all(p["flops_per_second"] > 0 for p in results["peak_matmul"].values())

    def positive(value):
        return isinstance(value, float | int) and math.isfinite(value) and value > 0

    sft = results["stages"]["sft"]
    for side in ("ours", "trl", "bare"):
        run = sft["runs"][side][0]
        assert positive(run["tokens_per_second"]) and positive(run["mfu"]) and positive(run["peak_memory_bytes"])
    assert sft["runs"]["trl"][0]["gradient_checkpointing"] is True  # TRL's default, measured as it is
    assert sft["runs"]["ours"][0]["gradient_checkpointing"] is False
    # sft.py's automatic compile decided after its third step: a 4-step run is far too short to compile
    assert sft["runs"]["ours"][0]["torch_compile"] == "auto: off after step 3"
    assert positive(sft["runs"]["ours"][0]["eval_loss"]) and positive(sft["runs"]["trl"][0]["eval_loss"])
    assert positive(sft["ratios"]["ours/trl"]["tokens_per_second"]["median"])
    lora = results["stages"]["sft_lora"]
    assert set(lora["runs"]) == {"ours", "trl"} and lora["lora"] is True
    for side in ("ours", "trl"):  # LoRA trains far fewer parameters than the model holds
        run = lora["runs"][side][0]
        assert positive(run["tokens_per_second"]) and positive(run["eval_loss"])
        assert 0 < run["trainable_parameters"] < 0.5 * lora["model"]["parameters"], run
    for stage in ("reward", "dpo"):
        assert positive(results["stages"][stage]["runs"]["ours"][0]["pairs_per_second"])
    ppo = results["stages"]["ppo"]["alone"]["runs"]["ours"][0]
    assert positive(ppo["episodes_per_second"]) and positive(ppo["generated_tokens_per_second"])
    assert sum(ppo["time_shares"].values()) == pytest.approx(1.0, abs=0.1)
    generation = results["stages"]["generation"]["runs"]
    assert {"float32_bs1", "float32_bs4", "bfloat16_bs1", "bfloat16_bs4"} <= set(generation)
    # run_generation.py's default path: the lean loop for the float32 Llama, generate for bfloat16 weights
    assert generation["float32_bs4"][0]["decoding"] == "lean" and generation["bfloat16_bs4"][0]["decoding"] == "generate"
    assert [t["what"].split(",")[0] for t in results["targets"]][:2] == ["SFT non-padding tokens/s", "SFT tokens/s"]
    markdown = (out / files[1]).read_text()
    assert "torch.compile (`--torch_compile`, all_results.json): auto: off after step 3" in markdown
    assert "### SFT" in markdown and "### SFT with LoRA" in markdown and "### PPO" in markdown and "| target | goal | measured | met |" in markdown


def test_report_helpers_write_aside_and_name_the_machine(tmp_path):
    """bench/common.py: a result file appears whole (no .tmp left), and the reports' machine line names the CPU,
    cores, memory and the torch / TRL versions, with the run's note."""
    import common

    path = tmp_path / "r.md"
    common.write_aside(str(path), "first\n")
    common.write_aside(str(path), "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]
    out = {"machine": {"cpu_model": "Xeon", "usable_cores": 2, "memory_bytes": 24 * 2**30},
           "versions": {"torch": "2.13.0", "trl": "1.16.0"}}
    assert common.machine_line(out, "a note") == "Machine: Xeon, 2 usable cores, 24 GiB; torch 2.13.0, TRL 1.16.0. a note"
    assert common.machine_line(out).endswith("TRL 1.16.0.")


def test_sharded_memory_launches_the_gpu_configs_with_bf16_on_cuda():
    """The GPU form of the sharded-memory benchmark (not runnable here): the GPU config files, the process count
    given, bf16 for accelerate and the script alike, ``--device cuda`` for ppo.py; the CPU form keeps the 2-process
    CPU configs in fp32 unless bf16 is asked for, and names another process count on the launch line. sft.py gets
    its own output folder per layout."""
    inputs = {"policy": "P", "prompts": "prompts.jsonl", "rule": "rule.py", "texts": "texts.jsonl"}
    gpu = sharded_memory.command("ppo", "zero3", inputs, "/out", 2, "cuda", 4)
    assert gpu[gpu.index("--config_file") + 1].endswith(os.path.join("accelerate", "zero3.yaml"))
    assert gpu[gpu.index("--num_processes") + 1] == "4"
    assert gpu[gpu.index("--bf16") + 1] == "True" and gpu[gpu.index("--device") + 1] == "cuda"
    cpu = sharded_memory.command("ppo", "zero3-nogather", inputs, "/out", 2, "cpu", 2)
    assert cpu[cpu.index("--config_file") + 1].endswith("cpu_zero3.yaml") and "--num_processes" not in cpu
    assert cpu[cpu.index("--bf16") + 1] == "False" and cpu[-2:] == ["--ds3_gather_for_generation", "False"]
    sft = sharded_memory.command("sft", "fsdp2", inputs, "/out", 2, "cuda", 1)
    assert "sft.py" in sft and sft[sft.index("--config_file") + 1].endswith("fsdp.yaml")
    assert sft[sft.index("--dataset_name") + 1] == "texts.jsonl" and sft[sft.index("--max_steps") + 1] == "8"
    assert sft[sft.index("--output_dir") + 1] == os.path.join("/out", "run-sft-fsdp2")
    bf16 = sharded_memory.command("ppo", "ddp", inputs, "/out", 2, "cpu", 2, "bf16")  # accelerate and ppo.py agree
    assert bf16[bf16.index("--mixed_precision") + 1] == "bf16" and bf16[bf16.index("--bf16") + 1] == "True"
    assert bf16.index("--mixed_precision") < bf16.index("ppo.py") and "--mixed_precision" not in cpu
    four = sharded_memory.command("ppo", "zero3", inputs, "/out", 2, "cpu", 4)  # the CPU configs name 2 processes
    assert four[four.index("--num_processes") + 1] == "4" and four.index("--num_processes") < four.index("ppo.py")


def test_sharded_memory_bound_divides_the_model_states_and_keeps_the_rest():
    """The report's arithmetic: 4 x 2**20 parameters (16 MiB in fp32), DDP's 20 bytes a parameter (80 MiB: its
    gradient buckets are views of the gradients) and ZeRO-3's 20 bytes on 2 processes (40 MiB), the floor and DDP's
    other memory counted for both, plus the gathered policy (16 MiB)."""
    text = sharded_memory.bound(4 * 2**20, 2, 300.0, {"ddp": {"peak_mib_per_process": [480.0, 500.0]}})
    assert "DDP 80 MiB" in text and "ZeRO-3 40 MiB" in text and "16 MiB while the rollout" in text
    assert "other 120 MiB" in text  # 500 - 300 - 80
    assert "about 476 MiB (0.95x DDP's), 460 MiB (0.92x) without the gather" in text


def test_sharded_memory_report_judges_the_target_on_2_processes_only():
    """The 0.6x target is set for 2 processes: a 2-process run is judged met / not met; a 4-process run reports its
    ratio against the target without calling it met, and its arithmetic divides the states by 4."""
    def results(processes: int, zero3_peak: float) -> dict:
        runs = {"ddp": {"script": "ppo", "peak_mib_per_process": [1000.0] * processes, "vs_ddp": 1.0, "speed": 1.0,
                        "wall_seconds": 1.0},
                "zero3": {"script": "ppo", "peak_mib_per_process": [zero3_peak] * processes,
                          "vs_ddp": zero3_peak / 1000, "speed": 1.0, "wall_seconds": 1.0}}
        return {"device": "cpu", "date": "2026-12-05", "machine": "M", "parameters": 8 * 2**20, "steps": 2,
                "num_processes": processes, "floor_mib": 300.0, "runs": runs, "commands": {}, "scripts": ["ppo"]}

    two = sharded_memory.markdown(results(2, 700.0))
    assert "(ppo.py, 2 processes): 0.70x, not met." in two and "divided by 2" in two
    four = sharded_memory.markdown(results(4, 550.0))
    assert "0.55x on 4 processes (within it, but the target names 2)." in four and "divided by 4" in four
    assert "met." not in four.split("Target:")[1].split("\n")[0]


def test_ppo_benchmark_refuses_to_skip_a_side_it_never_ran(tmp_path):
    """``--skip trl`` reuses TRL's last run in --out: with none there it stops before running anything, saying so,
    instead of failing with a traceback after our side's run."""
    import ppo_vs_trl

    with pytest.raises(SystemExit) as stopped:
        ppo_vs_trl.parse_args(["--setting", "small", "--out", str(tmp_path), "--skip", "trl"])
    assert stopped.value.code == 2
    (tmp_path / "trl.log.process.json").write_text("{}")
    args, settings = ppo_vs_trl.parse_args(["--setting", "small", "--out", str(tmp_path), "--skip", "trl"])
    assert args.skip == "trl" and settings["batch_size"] == 32


def test_decode_step_times_both_ways_and_refuses_other_models(tmp_path):
    """bench/decode_step.py on a tiny random Llama: both ways timed and their ratio printed; a model the lean loop
    does not apply to is refused in one line."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4)).save_pretrained(tmp_path / "gpt2")
    script = os.path.join(REPO, "bench", "decode_step.py")
    done = subprocess.run([sys.executable, script, "--model", str(tmp_path / "llama"), "--rows", "4", "--prompt",
                           "8", "--tokens", "6", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generate" in done.stdout and "lean / generate:" in done.stdout
    refused = subprocess.run([sys.executable, script, "--model", str(tmp_path / "gpt2"), "--repeats", "1"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "not a LlamaForCausalLM" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_lora_products_reports_what_each_way_keeps(tmp_path):
    """bench/lora_products.py on a tiny random Llama: one JSON line per way with its calls and kept bytes; over a
    bfloat16 model (float32 adapters) nothing folds and the products form keeps less than PEFT's forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    script = os.path.join(REPO, "bench", "lora_products.py")
    rows = {}
    for dtype in ("float32", "bfloat16"):
        done = subprocess.run([sys.executable, script, "--model", str(tmp_path / "llama"), "--dtype", dtype,
                               "--rows", "2", "--tokens", "24", "--rank", "4", "--repeats", "1"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        rows[dtype] = {row["way"]: row for row in map(json.loads, done.stdout.strip().splitlines())}
    assert set(rows["float32"]) == {"peft", "products", "folded"} and set(rows["bfloat16"]) == {"peft", "products"}
    assert rows["float32"]["products"]["calls"]["products"] == 14 and rows["float32"]["folded"]["calls"]["folded"] == 14
    assert rows["bfloat16"]["products"]["calls"]["products"] == 14
    assert rows["bfloat16"]["products"]["kept_bytes"] < 0.8 * rows["bfloat16"]["peft"]["kept_bytes"]
    assert rows["float32"]["products"]["kept_bytes"] < rows["float32"]["peft"]["kept_bytes"]


def test_the_gpu_checks_carry_the_versions_the_project_and_the_ppo_peer_ask_for():
    """bench/cuda_checks.sh installs pinned wheels on the GPU machine (no registry there): the toolkit's set must
    satisfy requirements.txt, the peer's must be bench/ppo_vs_trl.py's TRL_PINS; and the script must parse."""
    import re

    import ppo_vs_trl
    from packaging.requirements import Requirement

    script = os.path.join(REPO, "bench", "cuda_checks.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    with open(script, encoding="utf-8") as handle:
        text = handle.read()

    def pins(name: str) -> dict[str, str]:
        specs = re.search(rf"^{name}=\(([^)]*)\)", text, re.M).group(1).split()
        return dict(spec.split("==") for spec in specs)

    ours, peer = pins("OURS_WHEELS"), pins("PEER_WHEELS")
    assert peer.items() >= dict(pin.split("==") for pin in ppo_vs_trl.TRL_PINS).items()
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as handle:
        wanted = [Requirement(line.split("#")[0].strip()) for line in handle if line.split("#")[0].strip()]
    for requirement in wanted:
        if requirement.name in ours:
            assert requirement.specifier.contains(ours[requirement.name]), (requirement, ours[requirement.name])
    assert {"transformers", "trl", "peft", "datasets", "accelerate"} <= ours.keys()
