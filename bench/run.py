#!/usr/bin/env python
"""The benchmark suite (``make bench``): every stage of the toolkit on this machine, with side-by-side peers.

    python bench/run.py [--device auto|cpu|cuda] [--repeats 3] [--other_repeats 1] [--no_peers]
                        [--stages sft,reward,dpo,ppo,generation,learning,critic_free] [--setup cpu|cuda|quick]
                        [--ours_sft_args "..."] [--trl_sft_args "..."] [--out bench/results] [--work .bench/suite]

Writes ``<out>/<device>-<date>.json`` (every run's figures, medians, ratios, the machine, the versions, the
commands) and ``<out>/<device>-<date>.md`` (the tables docs/benchmarks.md points at). Not a test: nothing here asserts a
speed; the figures are printed and written.

Stages and what each reports:

* **sft** - our ``sft.py`` (its defaults: bf16 autocast where the device has it natively, no gradient
  checkpointing; ``--use_peft False`` because TRL's CLI fine-tunes in full) against
  ``trl sft`` (TRL's CLI; it launches ``trl/scripts/sft.py`` through accelerate, which with one process is
  that script: the suite runs it directly) with its defaults (on CPU plus ``--use_cpu True``, which its
  default ``bf16=True`` demands; on a CPU without native bfloat16 plus ``--bf16 False``, as that default would
  run emulated), and a bare PyTorch loop on the same rows (``bench/bare_loop.py``: the
  ceiling). Same model (a Llama built from a config, random weights), same rows, batch size, learning rate and
  step count. Non-padding tokens/s over the steps after the warm-up, median step time, peak memory (RSS on CPU,
  ``max_memory_allocated`` on a GPU), MFU = 6 x N x tokens/s / the measured peak matrix-product rate in the
  run's dtype (``bench/machine.py``; N excludes the input embedding), held-out loss after training
  (``bench/eval_loss.py``, the same for both).
* **reward** / **dpo** - ``reward_modeling.py`` / ``dpo.py`` with their defaults on the toy pairs from the SFT
  model: pairs/s, peak memory.
* **ppo** - ``bench/ppo_vs_trl.py`` per repeat (ours against TRL 1.12.0's PPOTrainer in the venv it builds):
  episodes/s, generated tokens/s, the share of a step in generation / forward passes / scoring / update, peak
  memory; the ``100m`` setting (memory) once. Without peers: ``ppo.py`` alone on the embedded default.
* **generation** - ``bench/gen_bench.py``: tokens/s at batch sizes 1 and 16, float32 and bfloat16.
* **learning** (CPU setup; about 15 minutes) - ``bench/ppo_learning.py``: what PPO *learns*, each engine with its
  own defaults and the same user flags (stories260K, a reward model trained on a rule, the rule as held-out gold):
  gold and reward gain per 100 episodes and per minute, KL, episodes/s, peak RSS, for ``ppo.py`` and TRL 1.12's
  PPOTrainer (without ``--no_peers``).
* **critic_free** (CPU setup; about 8 minutes) - ``bench/critic_free.py``: ``ppo.py``, ``grpo.py`` and ``rloo.py``
  on the toy task with the same episodes, each with its defaults, three seeds: gold and reward gain over the SFT
  model per 100 episodes and per minute, KL from the base, episodes/s, peak RSS.

Peer runs are interleaved (ours, bare, theirs; then again, with seed 42 + i in run i), so drift on a shared
machine hits every side; each ratio is taken run by run (ours_i / theirs_i) and reported as median, min and max
over ``--repeats`` runs. Stages without a peer run ``--other_repeats`` times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import common  # noqa: E402 (bench/ is not a package: its programs import each other from their folder)

SETUPS = {
    # sft rows = batch_size x steps: one epoch
    "cpu": dict(sft_size="40m", long=True, batch_size=8, steps=16, warmup=2, pair_steps=12, pair_batch=8,
                ppo=["small", "100m"], ppo_repeats={"100m": 1}, gen_batches=[1, 16], gen_batch_count=2,
                ppo_alone=dict(steps=3, batch_size=16, response_length=32)),
    "cuda": dict(sft_size="350m", long=True, batch_size=64, steps=30, warmup=5, pair_steps=20, pair_batch=32,
                 ppo=["small", "100m"], ppo_repeats={}, gen_batches=[1, 16], gen_batch_count=4,
                 ppo_alone=dict(steps=4, batch_size=64, response_length=64)),
    "quick": dict(sft_size="tiny", long=False, batch_size=4, steps=4, warmup=1, pair_steps=3, pair_batch=4,
                  ppo=[], ppo_repeats={}, gen_batches=[1, 4], gen_batch_count=1,
                  ppo_alone=dict(steps=2, batch_size=4, response_length=8)),
}
STAGES = ("sft", "sft_lora", "reward", "dpo", "ppo", "generation", "learning", "critic_free")
# learning and critic_free: CPU (their settings are tiny)
DEFAULT_STAGES = {"cpu": STAGES, "cuda": STAGES[:-2], "quick": STAGES[:-2]}
TRL_SFT_SCRIPT = "trl/scripts/sft.py"


def say(message: str) -> None:
    common.say(message)


def run(cmd: list[str], log: str, what: str) -> None:
    """Run ``cmd`` in the repository, output to ``log``; a failure stops the suite with the log's end."""
    common.run(cmd, what, log=log, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def spread(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def steady(record: dict, warmup: int) -> dict:
    """Throughput over the steps after the first ``warmup`` (allocator, kernel selection and caches settle)."""
    seconds, tokens, rows = (record[k][warmup:] for k in ("step_seconds", "step_tokens", "step_rows"))
    total = sum(seconds)
    return {"steps_timed": len(seconds), "tokens_per_second": sum(tokens) / total if total else None,
            "rows_per_second": sum(rows) / total if total else None,
            "step_seconds": statistics.median(seconds) if seconds else None,
            # what the untimed steps took (with --torch_compile, the compiling)
            "warmup_seconds": sum(record["step_seconds"][:warmup])}


def peak_memory(record: dict, cuda: bool) -> int | None:
    return record.get("cuda_max_memory_allocated") if cuda else record.get("peak_rss_bytes")


# ------------------------------------------------------------------------------------------------- stages
class Suite:
    def __init__(self, args):
        self.args = args
        self.setup = SETUPS[args.setup]
        self.cuda = args.device == "cuda"
        self.work = os.path.abspath(args.work)
        self.py = sys.executable
        self.commands: dict[str, str] = {}
        self.peaks: dict[str, dict] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def peak(self, dtype: str) -> float:
        if dtype not in self.peaks:
            out = self.path(f"peak_{dtype}.log")
            cmd = [self.py, "bench/machine.py", "--peak", "--device", self.args.device, "--dtype", dtype,
                   *(["--quick"] if self.args.setup == "quick" else [])]
            run(cmd, out, f"peak matmul rate ({dtype})")
            with open(out, encoding="utf-8") as handle:
                self.peaks[dtype] = json.loads(handle.read().strip().splitlines()[-1])
        return self.peaks[dtype]["flops_per_second"]

    def inputs(self) -> dict:
        import sft_inputs

        s = self.setup
        os.makedirs(self.work, exist_ok=True)
        model_dir = self.path("model")
        shutil.rmtree(model_dir, ignore_errors=True)
        model = sft_inputs.build_model(s["sft_size"], model_dir)
        data = sft_inputs.write_sft_data(self.work, s["batch_size"] * s["steps"], long=s["long"], eval_rows=32)
        pairs_dir = self.path("pairs")
        os.makedirs(pairs_dir, exist_ok=True)
        rows = s["pair_batch"] * s["pair_steps"]
        os.replace(sft_inputs.write_pairs(self.work, rows), os.path.join(pairs_dir, "train.jsonl"))
        return {"model": model, "data": data, "pairs": pairs_dir, "pair_rows": rows}

    # --------------------------------------------------------------------------------------------- sft
    def sft_commands(self, inp: dict, repeat: int, lora: bool = False) -> dict[str, list[str]]:
        s, device = self.setup, self.args.device
        tag = "sft_lora" if lora else "sft"
        # repeat i uses seed 42 + i on every side: different batch orders, so the held-out losses have a spread
        common = ["--model_name_or_path", inp["model"]["path"], "--max_steps", str(s["steps"]),
                  "--per_device_train_batch_size", str(s["batch_size"]), "--save_strategy", "no",
                  "--seed", str(42 + repeat)]
        import trl

        trl_script = os.path.join(os.path.dirname(os.path.dirname(trl.__file__)), TRL_SFT_SCRIPT)
        probe = [self.py, "bench/trainer_probe.py"]
        # LoRA: each side with its own LoRA defaults (ours: sft.py's default, rank 16 on every linear layer; TRL's:
        # --use_peft True, rank 16 on peft's default modules), both at SFTConfig's learning rate
        return {
            "ours": [*probe, self.path(f"{tag}_ours_{repeat}.json"), "--", "sft.py", *common,
                     "--dataset_name", inp["data"]["ours"], "--output_dir", self.path(f"{tag}_ours_{repeat}"),
                     "--overwrite_output_dir", "--use_peft", str(lora), "--device", device,
                     *shlex.split(self.args.ours_sft_args)],
            "trl": [*probe, self.path(f"{tag}_trl_{repeat}.json"), "--", trl_script, *common,
                    "--dataset_name", inp["data"]["trl"], "--output_dir", self.path(f"{tag}_trl_{repeat}"),
                    *(["--use_cpu", "True"] if device == "cpu" else []), *(["--use_peft", "True"] if lora else []),
                    *shlex.split(self.args.trl_sft_args)],
        }

    def bare_command(self, inp: dict, repeat: int, precision: str) -> list[str]:
        s = self.setup
        return [self.py, "bench/bare_loop.py", "--model", inp["model"]["path"],
                "--data", os.path.join(inp["data"]["trl"], "train.jsonl"), "--steps", str(s["steps"]),
                "--batch_size", str(s["batch_size"]), "--device", self.args.device,
                "--seed", str(42 + repeat),
                *(["--bf16"] if precision == "bf16" else []), "--result", self.path(f"sft_bare_{repeat}.json")]

    def sft(self, inp: dict, lora: bool = False) -> dict:
        """ours, trl sft and (in full fine-tuning) the bare loop, interleaved; ``lora``: both sides with LoRA."""
        s, n = self.setup, inp["model"]["matmul_parameters"]
        tag = "sft_lora" if lora else "sft"
        sides = ("ours", "trl") if lora else ("ours", "trl", "bare")
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for repeat in range(self.args.repeats):
            cmds = self.sft_commands(inp, repeat, lora)
            for side in ("ours", "trl"):
                out = self.path(f"{tag}_{side}_{repeat}")
                shutil.rmtree(out, ignore_errors=True)
                run(cmds[side], out + ".log", f"{tag} {side} #{repeat + 1}")
                record = load(cmds[side][2])
                if side == "ours" and not lora:
                    cmds["bare"] = self.bare_command(inp, repeat, record["precision"])
                    run(cmds["bare"], self.path(f"sft_bare_{repeat}.log"), f"sft bare loop #{repeat + 1}")
                    runs["bare"].append(self.sft_figures(load(self.path(f"sft_bare_{repeat}.json")), n, None))
                evaluation = out + "_eval.log"
                # a LoRA side saved an adapter: transformers loads it onto its base (peft installed)
                run([self.py, "bench/eval_loss.py", "--model", out, "--data", inp["data"]["eval"], "--device",
                     self.args.device], evaluation, f"eval loss ({tag} {side})")
                with open(evaluation, encoding="utf-8") as handle:
                    loss = json.loads(handle.read().strip().splitlines()[-1])["eval_loss"]
                figures = self.sft_figures(record, n, loss, lora)
                if side == "ours":  # sft.py's torch.compile choice (auto: on or off after its first steps)
                    with open(os.path.join(out, "all_results.json"), encoding="utf-8") as handle:
                        figures["torch_compile"] = json.load(handle).get("torch_compile")
                runs[side].append(figures)
                shutil.rmtree(out, ignore_errors=True)
            self.commands.update({f"{tag}_{k}": shlex.join(v) for k, v in cmds.items()})
        pairs = [("ours", "trl")] if lora else [("ours", "trl"), ("ours", "bare")]
        return {"model": inp["model"], "lora": lora, "ours_args": self.args.ours_sft_args,
                "trl_args": self.args.trl_sft_args, "trl_note": self.args.trl_sft_note,
                "rows": s["batch_size"] * s["steps"],
                "batch_size": s["batch_size"], "steps": s["steps"], "warmup_steps_excluded": s["warmup"],
                "runs": runs, "summary": self.summarise(runs),
                "ratios": self.ratios(runs, ["tokens_per_second", "mfu"], pairs),
                "memory_ratio": self.ratios(runs, ["peak_memory_bytes"], [("ours", "trl")])}

    def sft_figures(self, record: dict, n: int, eval_loss: float | None, lora: bool = False) -> dict:
        """MFU counts 6 x N FLOPs per token in full fine-tuning and 4 x N under LoRA (no weight gradients for the
        frozen model; the adapters' FLOPs left out)."""
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(record["precision"], "float32")
        figures = steady(record, self.setup["warmup"])
        peak = self.peak(dtype)
        tps = figures["tokens_per_second"]
        return {**figures, "precision": record["precision"], "gradient_checkpointing": record["gradient_checkpointing"],
                "peak_memory_bytes": peak_memory(record, self.cuda),
                "mfu": (4 if lora else 6) * n * tps / peak if tps else None,
                "peak_matmul_flops": peak, "eval_loss": eval_loss, "threads": record.get("torch_threads"),
                "trainable_parameters": record.get("trainable_parameters")}

    # ---------------------------------------------------------------------------------- reward, dpo
    def pairs(self, inp: dict, script: str, name: str) -> dict:
        s = self.setup
        runs = []
        for repeat in range(self.args.other_repeats):
            out = self.path(f"{name}_{repeat}")
            shutil.rmtree(out, ignore_errors=True)
            result = self.path(f"{name}_{repeat}.json")
            cmd = [self.py, "bench/trainer_probe.py", result, "--", script, "--model_name_or_path",
                   inp["model"]["path"], "--dataset_name", inp["pairs"], "--output_dir", out, "--max_steps",
                   str(s["pair_steps"]), "--per_device_train_batch_size", str(s["pair_batch"]), "--save_strategy",
                   "no", "--device", self.args.device]
            run(cmd, self.path(f"{name}_{repeat}.log"), f"{name} #{repeat + 1}")
            record = load(result)
            seconds = record["step_seconds"][s["warmup"]:]
            pairs = s["pair_batch"] * len(seconds)
            runs.append({"pairs_per_second": pairs / sum(seconds) if sum(seconds) else None,
                         "step_seconds": statistics.median(seconds) if seconds else None,
                         "peak_memory_bytes": peak_memory(record, self.cuda), "precision": record["precision"],
                         "trainable_parameters": record.get("trainable_parameters")})
            self.commands[name] = shlex.join(cmd)
            shutil.rmtree(out, ignore_errors=True)
        return {"script": script, "batch_size": s["pair_batch"], "steps": s["pair_steps"],
                "runs": {"ours": runs}, "summary": self.summarise({"ours": runs})}

    # ------------------------------------------------------------------------------------------- ppo
    def ppo(self, inp: dict) -> dict:
        if not self.setup["ppo"] or self.args.no_peers:
            return self.ppo_alone(inp)
        out: dict = {}
        for setting in self.setup["ppo"]:
            repeats = self.setup["ppo_repeats"].get(setting, self.args.repeats)
            runs: dict[str, list[dict]] = {"ours": [], "trl": []}
            for repeat in range(repeats):
                folder = self.path(f"ppo_{setting}_{repeat}")
                argv = ["--setting", setting, "--device", self.args.device, "--out", folder,
                        "--threads", str(self.args.threads)]
                say(f"ppo {setting} #{repeat + 1}: bench/ppo_vs_trl.py {shlex.join(argv)}")
                with open(self.path(f"ppo_{setting}_{repeat}.log"), "w", encoding="utf-8") as log:
                    code = subprocess.run([self.py, "bench/ppo_vs_trl.py", *argv], cwd=REPO, stdout=log,
                                          stderr=subprocess.STDOUT).returncode
                if code != 0:
                    raise SystemExit(f"error: ppo {setting} failed (exit {code}): see {log.name}")
                result = load(os.path.join(folder, "bench_results.json"))
                memory_key = "cuda_max_memory_allocated" if self.cuda else "peak_rss_bytes"
                for side in ("ours", "trl"):
                    figures = result[side]
                    runs[side].append({"episodes_per_second": figures["episodes_per_second"],
                                       "generated_tokens_per_second": figures["generated_tokens_per_second"],
                                       "peak_memory_bytes": figures[memory_key],
                                       "time_shares": figures.get("time_shares"),
                                       "reward_gain": figures["reward_gain"], "final_kl": figures["final_kl"]})
                self.commands[f"ppo_{setting}"] = "python bench/ppo_vs_trl.py " + shlex.join(argv)
                self.commands[f"ppo_{setting}_ours"] = result["commands"]["ours"]
                self.commands[f"ppo_{setting}_trl"] = result["commands"]["trl"]
                out.setdefault("environments", result["environments"])
            out[setting] = {"settings": result["settings"], "runs": runs, "summary": self.summarise(runs),
                            "ratios": self.ratios(runs, ["episodes_per_second", "generated_tokens_per_second",
                                                         "peak_memory_bytes"], [("ours", "trl")])}
        return out

    def ppo_alone(self, inp: dict) -> dict:
        """``ppo.py`` alone (no peer) with the suite's model as the policy and the toy gold judge as the reward:
        the smoke path, and the GPU's generation figures when TRL 1.12 cannot be installed."""
        s = self.setup
        runs = []
        for repeat in range(self.args.other_repeats):
            out = self.path(f"ppo_alone_{repeat}")
            shutil.rmtree(out, ignore_errors=True)
            result = self.path(f"ppo_alone_{repeat}_memory.json")
            cmd = [self.py, "bench/common.py", "--cuda-peak", result, "--", "ppo.py",
                   "--model_name_or_path", inp["model"]["path"], "--output_dir", out,
                   "--steps", str(s["ppo_alone"]["steps"]), "--batch_size", str(s["ppo_alone"]["batch_size"]),
                   "--mini_batch_size", str(s["ppo_alone"]["batch_size"] // 2),
                   "--output_max_length", str(s["ppo_alone"]["response_length"]), "--reward_function", "toy",
                   "--device", self.args.device, "--report_to", "none", "--save_merged", "False",
                   "--sample_every", "0"]
            run(cmd, self.path(f"ppo_alone_{repeat}.log"), f"ppo (ours alone) #{repeat + 1}")
            summary = load(os.path.join(out, "all_results.json"))
            memory = load(result)
            runs.append({"episodes_per_second": summary["episodes_per_second"],
                         "generated_tokens_per_second": summary.get("generated_tokens_per_second"),
                         "peak_memory_bytes": memory.get("cuda_max_memory_allocated") if self.cuda
                         else memory.get("max_rss_bytes"),
                         "time_shares": {k.split("/", 1)[1]: v for k, v in summary.items()
                                         if k.startswith("time_share/")}})
            self.commands["ppo_alone"] = shlex.join(cmd)
            shutil.rmtree(out, ignore_errors=True)
        return {"alone": {"settings": s["ppo_alone"], "runs": {"ours": runs}, "summary": self.summarise({"ours": runs})}}

    # --------------------------------------------------------------------------------------- learning
    def learning(self) -> dict:
        """bench/ppo_learning.py with its default configurations: ppo.py's defaults (and at TRL's learning rate),
        TRL 1.12's PPOTrainer with its defaults (and at 3e-5), the same user flags."""
        folder = self.path("learning")
        argv = ["--out", folder, *(["--no_trl"] if self.args.no_peers else [])]
        run([self.py, "bench/ppo_learning.py", *argv], self.path("learning.log"), "ppo learning")
        result = load(os.path.join(folder, "learning_results.json"))
        self.commands["learning"] = "python bench/ppo_learning.py " + shlex.join(argv)
        return {k: result[k] for k in ("episodes", "user_flags", "trl_user_flags", "results", "commands")}

    def critic_free(self) -> dict:
        """bench/critic_free.py: ppo.py, grpo.py and rloo.py on the toy task, the same episodes, three seeds."""
        folder = self.path("critic_free")
        run([self.py, "bench/critic_free.py", "--out", folder], self.path("critic_free.log"), "critic-free")
        result = load(os.path.join(folder, "critic_free_results.json"))
        self.commands["critic_free"] = "python bench/critic_free.py --out " + folder
        return {k: result[k] for k in ("episodes", "seeds", "results", "commands")}

    # ------------------------------------------------------------------------------------- generation
    def generation(self, inp: dict) -> dict:
        s = self.setup
        runs: dict[str, list[dict]] = {}
        for dtype in ("float32", "bfloat16"):
            for batch in s["gen_batches"]:
                key = f"{dtype}_bs{batch}"
                runs[key] = []
                for repeat in range(self.args.other_repeats):
                    result = self.path(f"gen_{key}_{repeat}.json")
                    cmd = [self.py, "bench/gen_bench.py", "--model", inp["model"]["path"], "--batch_size", str(batch),
                           "--batches", str(s["gen_batch_count"]), "--dtype", dtype, "--device", self.args.device,
                           "--result", result]
                    run(cmd, self.path(f"gen_{key}_{repeat}.log"), f"generation {key} #{repeat + 1}")
                    record = load(result)
                    runs[key].append({"tokens_per_second": record["tokens_per_second"],
                                      "new_tokens": record["new_tokens"], "decoding": record.get("decoding"),
                                      "peak_memory_bytes": peak_memory(record, self.cuda)})
                    self.commands[f"generation_{key}"] = shlex.join(cmd)
        return {"model": inp["model"]["path"], "runs": runs, "summary": self.summarise(runs)}

    # -------------------------------------------------------------------------------------- summaries
    @staticmethod
    def summarise(runs: dict[str, list[dict]]) -> dict:
        out = {}
        for side, items in runs.items():
            keys = [k for k, v in (items[0] if items else {}).items() if isinstance(v, (int, float))
                    and not isinstance(v, bool)]
            out[side] = {k: spread([item.get(k) for item in items]) for k in keys}
            shares = [item["time_shares"] for item in items if item.get("time_shares")]
            if shares:
                out[side]["time_shares"] = {k: statistics.median(s[k] for s in shares) for k in shares[0]}
        return out

    @staticmethod
    def ratios(runs: dict[str, list[dict]], keys: list[str], pairs: list[tuple[str, str]]) -> dict:
        """Run-by-run ratios ours_i / theirs_i: median, min, max."""
        out = {}
        for a, b in pairs:
            out[f"{a}/{b}"] = {k: spread([x.get(k) / y.get(k) if x.get(k) and y.get(k) else None
                                          for x, y in zip(runs[a], runs[b], strict=True)]) for k in keys}
        return out


# ---------------------------------------------------------------------------------------------- targets
def targets(stages: dict, device: str) -> list[dict]:
    """The suite's targets, each with the measured median and whether it is met."""
    out = []

    def add(what: str, target: str, value, met):
        out.append({"what": what, "target": target, "measured": value, "met": met})

    for key, label in (("sft", "SFT"), ("sft_lora", "SFT with LoRA")):
        sft = stages.get(key)
        if not sft:
            continue
        r, loss = sft["ratios"], sft["summary"]
        ours_trl = (r["ours/trl"]["tokens_per_second"] or {}).get("median")
        add(f"{label} non-padding tokens/s, ours / trl sft", ">= 2.0x", ours_trl,
            ours_trl is not None and ours_trl >= 2.0)
        if "ours/bare" in r:
            ours_bare = (r["ours/bare"]["tokens_per_second"] or {}).get("median")
            add(f"{label} tokens/s, ours / bare PyTorch loop", ">= 0.8x", ours_bare,
                ours_bare is not None and ours_bare >= 0.8)
        ours_loss = (loss["ours"].get("eval_loss") or {}).get("median")
        trl_loss = (loss["trl"].get("eval_loss") or {}).get("median")
        add(f"{label} held-out loss, ours vs trl sft", "no worse (within 1%)", [ours_loss, trl_loss],
            ours_loss is not None and trl_loss is not None and ours_loss <= 1.01 * trl_loss)
        if key == "sft":
            mfu = (loss["ours"].get("mfu") or {}).get("median")
            goal = 0.4 if device == "cuda" else 0.5
            add(f"SFT MFU ({device}, {sft['model']['parameters'] / 1e6:.1f}M parameters)", f">= {goal}", mfu,
                mfu is not None and mfu >= goal)
    ppo = stages.get("ppo") or {}
    for setting, goal in (("small", 2.5), ("100m", 2.0)):
        if setting in ppo:
            value = (ppo[setting]["ratios"]["ours/trl"]["episodes_per_second"] or {}).get("median")
            add(f"PPO episodes/s, ours / TRL 1.12 ({setting})", f">= {goal}x", value,
                value is not None and value >= goal)
    if "100m" in ppo:
        value = (ppo["100m"]["ratios"]["ours/trl"]["peak_memory_bytes"] or {}).get("median")
        add("PPO peak memory, ours / TRL 1.12 (100M)", "<= 0.5x", value, value is not None and value <= 0.5)
    learning = (stages.get("learning") or {}).get("results") or {}
    ours, peers = learning.get("defaults"), [r for r in learning.values() if r["engine"].startswith("TRL")]
    if ours and peers:
        for judge in ("gold", "reward"):
            best = max(peers, key=lambda r: r[f"{judge}_gain_per_100_episodes"])
            per_episode = [ours[f"{judge}_gain_per_100_episodes"], best[f"{judge}_gain_per_100_episodes"]]
            add(f"PPO {judge} gain per 100 episodes, ours vs TRL 1.12's best row (defaults)", ">= TRL's",
                per_episode, per_episode[0] >= per_episode[1])
            per_minute = ours[f"{judge}_gain_per_minute"] / best[f"{judge}_gain_per_minute"] \
                if best[f"{judge}_gain_per_minute"] > 0 else None
            add(f"PPO {judge} gain per minute, ours / TRL 1.12's best row (defaults)", ">= 1.5x", per_minute,
                per_minute is not None and per_minute >= 1.5)
    return out


# ----------------------------------------------------------------------------------------------- main
def trl_precision_note(args) -> str | None:
    """On a CPU without native bfloat16, add ``--bf16 False`` to trl sft's side (unless its flags set ``--bf16``):
    TRL's default ``bf16=True`` runs emulated there (measured on an AMD EPYC with AVX2 only: no first step within
    3 minutes, against 8.5 s a step in float32), while ``sft.py`` picks float32 itself. Returns what was done, for
    the results; None when nothing was."""
    if args.device != "cpu" or re.search(r"--bf16(\s|=|$)", args.trl_sft_args):
        return None
    sys.path.insert(0, REPO)
    from rlhfkit.device import cpu_bf16_feature

    if cpu_bf16_feature():
        return None
    args.trl_sft_args = (args.trl_sft_args + " --bf16 False").strip()
    note = ("this CPU has no native bfloat16 (no AMX-BF16 / AVX512-BF16): trl sft's default bf16=True would run "
            "emulated, so its side runs with `--bf16 False` (float32, as sft.py picks here); pass --trl_sft_args "
            "'--bf16 True' to keep TRL's default")
    say(note)
    return note


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--setup", choices=sorted(SETUPS), help="sizes and step counts (default: the device's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (ratios: median, min, max)")
    parser.add_argument("--other_repeats", type=int, default=1, help="runs of the stages without a peer "
                        "(reward, dpo, generation, PPO alone)")
    parser.add_argument("--stages", help=f"comma-separated, of: {', '.join(STAGES)} (default: all but learning "
                        "and critic_free on the cuda and quick setups)")
    parser.add_argument("--no_peers", action="store_true", help="PPO without TRL 1.12 (no venv to build)")
    parser.add_argument("--ours_sft_args", default="", help="more sft.py flags for our side of the sft and sft_lora "
                        "stages, to measure an option against the peer (e.g. '--torch_compile True')")
    parser.add_argument("--trl_sft_args", default="", help="more flags for trl sft's side of the same stages, where "
                        "a default of TRL's does not suit the machine; on a CPU without native bfloat16, where TRL's "
                        "bf16 default is emulated, '--bf16 False' is added unless these flags set --bf16")
    parser.add_argument("--threads", type=int, default=0, help="OMP/MKL threads of every run (0: torch's default)")
    parser.add_argument("--out", default=os.path.join(BENCH, "results"), help="where the JSON and Markdown go")
    parser.add_argument("--work", default=os.path.join(REPO, ".bench", "suite"), help="scratch folder")
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.setup = args.setup or args.device
    stages = [s.strip() for s in (args.stages or ",".join(DEFAULT_STAGES[args.setup])).split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}")
    if min(args.repeats, args.other_repeats) < 1:
        parser.error("--repeats and --other_repeats must be at least 1")
    args.stages = stages
    args.trl_sft_note = trl_precision_note(args) if {"sft", "sft_lora"} & set(stages) else None
    return args


def main(argv: list[str] | None = None) -> int:
    import machine
    import report

    args = parse_args(argv)
    if args.threads:
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started = time.perf_counter()
    suite = Suite(args)
    say(f"device {args.device}, setup {args.setup}, stages {','.join(args.stages)}, {args.repeats} repeat(s); "
        f"scratch {suite.work}")
    inp = suite.inputs()
    stages: dict = {}
    for stage in args.stages:
        say(f"stage {stage}")
        if stage in ("sft", "sft_lora"):
            stages[stage] = suite.sft(inp, lora=stage == "sft_lora")
        elif stage == "reward":
            stages["reward"] = suite.pairs(inp, "reward_modeling.py", "reward")
        elif stage == "dpo":
            stages["dpo"] = suite.pairs(inp, "dpo.py", "dpo")
        elif stage == "ppo":
            stages["ppo"] = suite.ppo(inp)
        elif stage == "learning":
            stages["learning"] = suite.learning()
        elif stage == "critic_free":
            stages["critic_free"] = suite.critic_free()
        else:
            stages["generation"] = suite.generation(inp)
    date = datetime.date.today().isoformat()
    results = {
        "schema": 1, "date": date, "device": args.device, "setup": {"name": args.setup, **SETUPS[args.setup]},
        "repeats": args.repeats, "other_repeats": args.other_repeats, "machine": machine.describe(args.device), "versions": machine.versions(),
        "threads": args.threads or "torch default", "peak_matmul": suite.peaks, "stages": stages,
        "targets": targets(stages, args.device), "commands": {"suite": shlex.join(["python", "bench/run.py",
                                                                                    *(argv or sys.argv[1:])]),
                                                               **suite.commands},
        "total_seconds": time.perf_counter() - started,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.device}-{date}" + ("" if args.setup == args.device else f"-{args.setup}"))
    common.write_aside(stem + ".json", json.dumps(results, indent=1))
    text = report.markdown(results)
    common.write_aside(stem + ".md", text)
    print("\n" + text, flush=True)
    say(f"wrote {stem}.json and {stem}.md in {results['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
