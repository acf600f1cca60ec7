"""The Markdown tables of a benchmark result (``bench/run.py``): the machine, then one table per stage, then the
targets. Figures are medians over the repeats, with min-max in brackets where there were several runs."""

from __future__ import annotations


def number(value, unit: str = "") -> str:
    """One figure as the benchmark reports print it: ``MiB`` (bytes shown in MiB), ``x`` (a ratio), ``%`` (a
    share), ``int``, ``signed`` (a gain), or a plain number with three significant digits or so."""
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{100 * value:.0f}%"
    if unit == "int":
        return f"{int(value):,}"
    if unit == "signed":
        return f"{value:+.3f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def cell(stat: dict | None, unit: str = "") -> str:
    """``median (min-max)`` of a spread, or ``-``."""
    if not stat:
        return "-"
    text = number(stat["median"], unit)
    if stat.get("n", 1) > 1 and stat["min"] != stat["max"]:
        text += f" ({number(stat['min'], unit)}-{number(stat['max'], unit)})"
    return text


def _machine(results: dict) -> list[str]:
    m, v = results["machine"], results["versions"]
    gpu = f"; GPU {', '.join(m['gpus'])}" if m.get("gpus") else ""
    cpu_bf16 = f", {m['cpu_bf16']}" if m.get("cpu_bf16") else ""
    peaks = ", ".join(f"{k} {p['flops_per_second'] / 1e9:,.0f} GFLOP/s" for k, p in results["peak_matmul"].items())
    lines = [
        f"Machine: {m['cpu_model']} ({m['usable_cores']} usable cores{cpu_bf16}, "
        f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB){gpu}; Python {m['python']}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, trl {v.get('trl')}, peft {v.get('peft')}, accelerate "
        f"{v.get('accelerate')}; torch threads {v.get('torch_threads')}.",
        f"Measured peak matrix-product rate ({results['device']}): {peaks or '-'}.",
        f"{results['repeats']} run(s) per side with a peer, {results.get('other_repeats', results['repeats'])} "
        f"per stage without; medians (min-max). Suite time {results['total_seconds'] / 60:.1f} min. "
        f"Command: `{results['commands']['suite']}`.",
    ]
    return lines


def _extra(sft: dict, side: str = "ours") -> str:
    return f" + `{sft[side + '_args']}`" if sft.get(side + "_args") else ""


def _sft(sft: dict, memory: str) -> list[str]:
    s = sft["summary"]
    model = sft["model"]
    lora = sft.get("lora", False)
    lines = [f"### SFT{' with LoRA' if lora else ''} ({model['parameters'] / 1e6:.1f}M-parameter Llama from a config, "
             f"{sft['rows']} rows, batch {sft['batch_size']}, {sft['steps']} steps, first "
             f"{sft['warmup_steps_excluded']} not timed)", "",
             f"| side | precision | non-padding tokens/s | step time (s) | MFU | {memory} | held-out loss |",
             "|---|---|---|---|---|---|---|"]
    if lora:
        names = {"ours": "ours (`sft.py` defaults: LoRA r16 on every linear layer)" + _extra(sft),
                 "trl": "`trl sft --use_peft True` (its defaults: LoRA r16 on peft's default modules)"
                        + _extra(sft, "trl")}
    else:
        names = {"ours": "ours (`sft.py` defaults, full fine-tuning)" + _extra(sft),
                 "trl": "`trl sft` (its defaults)" + _extra(sft, "trl"), "bare": "bare PyTorch loop (ceiling)"}
    for side, label in names.items():
        runs = sft["runs"][side]
        precision = runs[0]["precision"] + (" + grad. checkpointing" if runs[0].get("gradient_checkpointing") else "")
        x = s[side]
        lines.append(f"| {label} | {precision} | {cell(x.get('tokens_per_second'))} | {cell(x.get('step_seconds'))} | "
                     f"{cell(x.get('mfu'))} | {cell(x.get('peak_memory_bytes'), 'MiB')} | {cell(x.get('eval_loss'))} |")
    r = sft["ratios"]
    bare = f"ours / bare loop {cell(r['ours/bare']['tokens_per_second'], 'x')}; " if "ours/bare" in r else ""
    lines += ["", f"Ratios, run by run: ours / trl sft tokens/s {cell(r['ours/trl']['tokens_per_second'], 'x')}; "
                  f"{bare}peak memory ours / trl sft {cell(sft['memory_ratio']['ours/trl']['peak_memory_bytes'], 'x')}."]
    if sft.get("trl_note"):
        lines += ["", f"trl sft's precision: {sft['trl_note']}."]
    compiled = sorted({str(run.get("torch_compile")) for run in sft["runs"]["ours"] if run.get("torch_compile")})
    if compiled:
        lines += ["", f"Our side's torch.compile (`--torch_compile`, all_results.json): {'; '.join(compiled)}."]
    if sft.get("ours_args"):
        lines += ["", f"Ours ran with `{sft['ours_args']}` added. The untimed first {sft['warmup_steps_excluded']} "
                      f"steps took {cell(s['ours'].get('warmup_seconds'))} s on our side, "
                      f"{cell(s['trl'].get('warmup_seconds'))} s on trl sft's."]
    return lines


def _pairs(name: str, stage: dict, memory: str) -> str:
    x = stage["summary"]["ours"]
    run = stage["runs"]["ours"][0]
    return (f"| {name} (`{stage['script']}` defaults, {run['precision']}) | batch {stage['batch_size']} | "
            f"{cell(x.get('pairs_per_second'))} pairs/s | {cell(x.get('step_seconds'))} s/step | "
            f"{cell(x.get('peak_memory_bytes'), 'MiB')} {memory} |")


def _ppo(ppo: dict, memory: str) -> list[str]:
    lines = ["### PPO", "", "| setting | side | episodes/s | generated tokens/s | time: generation / forward / "
             f"scoring / update | {memory} |", "|---|---|---|---|---|---|"]
    for setting, block in ppo.items():
        if setting == "environments":
            continue
        for side in block["runs"]:
            x = block["summary"][side]
            shares = x.get("time_shares")
            share_text = " / ".join(number(shares.get(k), "%") for k in ("generation", "forward", "scoring", "update")) \
                if shares else "-"
            label = {"ours": "ours (`ppo.py`)", "trl": "TRL 1.12.0 PPOTrainer"}[side]
            lines.append(f"| {setting} | {label} | {cell(x.get('episodes_per_second'))} | "
                         f"{cell(x.get('generated_tokens_per_second'))} | {share_text} | "
                         f"{cell(x.get('peak_memory_bytes'), 'MiB')} |")
        if "ratios" in block:
            r = block["ratios"]["ours/trl"]
            lines.append(f"| {setting} | **ours / TRL** | {cell(r['episodes_per_second'], 'x')} | "
                         f"{cell(r['generated_tokens_per_second'], 'x')} | | {cell(r['peak_memory_bytes'], 'x')} |")
    return lines


def learning_table(rows: dict) -> str:
    """bench/ppo_learning.py's rows: what each PPO configuration learned, per episode and per minute."""
    head = ("| engine | configuration | critic | lr | gold before -> after | reward before -> after | KL | gold gain /100 ep "
            "| gold gain /min | reward gain /100 ep | episodes/s | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, r in rows.items():
        lines.append(f"| {r['engine']} | {name} | {r['value_model']} | {r['learning_rate']:g} | {r['gold_before']:.2f} -> "
                     f"{r['gold_after']:.2f} | {r['reward_before']:.2f} -> {r['reward_after']:.2f} | "
                     f"{r['kl_from_base'] if r['kl_from_base'] is None else round(r['kl_from_base'], 2)} | "
                     f"{r['gold_gain_per_100_episodes']:+.3f} | {r['gold_gain_per_minute']:+.3f} | "
                     f"{r['reward_gain_per_100_episodes']:+.3f} | {r['episodes_per_second']:.1f} | "
                     f"{r['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    cuda = results["device"] == "cuda"
    memory = "peak GPU memory" if cuda else "peak RSS"
    stages = results["stages"]
    lines = [f"## Benchmark: {results['device']}, {results['date']}", "", *_machine(results), ""]
    for key in ("sft", "sft_lora"):
        if key in stages:
            lines += _sft(stages[key], memory) + [""]
    pair_rows = [_pairs(n, stages[k], memory) for n, k in (("reward model", "reward"), ("DPO", "dpo")) if k in stages]
    if pair_rows:
        lines += ["### Reward modeling and DPO", "", "| stage | batch | throughput | step time | memory |",
                  "|---|---|---|---|---|", *pair_rows, ""]
    if "ppo" in stages:
        lines += _ppo(stages["ppo"], memory) + [""]
    if "learning" in stages:
        block = stages["learning"]
        lines += [f"### PPO learning ({block['episodes']} episodes; user flags `{block['user_flags']}`)", "",
                  learning_table(block["results"]), ""]
    if "critic_free" in stages:
        from critic_free import table

        block = stages["critic_free"]
        lines += [f"### PPO, GRPO and RLOO on the toy task ({block['episodes']} episodes each, seeds "
                  f"{', '.join(map(str, block['seeds']))})", "", table(block["results"]), ""]
    if "generation" in stages:
        lines += ["### Generation (KV cache, sampling, 64 new tokens)", "",
                  "| dtype, batch size | decoding | tokens/s | memory |", "|---|---|---|---|"]
        block = stages["generation"]
        for key, x in block["summary"].items():
            dtype, batch = key.rsplit("_bs", 1)
            ways = sorted({run.get("decoding") or "generate" for run in block["runs"].get(key, [])})
            lines.append(f"| {dtype}, {batch} | {', '.join(ways) or '-'} | {cell(x.get('tokens_per_second'))} | "
                         f"{cell(x.get('peak_memory_bytes'), 'MiB')} |")
        lines.append("")
    if results["targets"]:
        lines += ["### Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            value = t["measured"]
            shown = " vs ".join(number(v) for v in value) if isinstance(value, list) else number(value)
            lines.append(f"| {t['what']} | {t['target']} | {shown} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)
