"""What compare_base_vs_ppo.py reports: the summary (comparison.json), the terminal table, the per-answer
records (samples.jsonl) and the figure (comparison.png)."""

from __future__ import annotations

import math

import numpy as np

from rlhfkit import schemas, stats
from rlhfkit.compare import ModelSamples


def model_summary(samples: ModelSamples) -> dict:
    kl = stats.describe(samples.kl) if samples.kl is not None else None
    if kl is not None:
        kl["unmeasured"] = int(np.isnan(samples.kl).sum())
    return {
        "path": samples.path,
        "reward": stats.describe(samples.rewards),
        "gold": stats.describe(samples.gold) if samples.gold is not None else None,
        "response_tokens": stats.describe(samples.tokens),
        "stopped_fraction": float(samples.stopped.mean()),
        "kl_from_base": kl,
        "kl_note": samples.kl_note,
        "seconds": samples.seconds,
        "tokens_per_second": samples.tokens_per_second,
    }


def summarize(samples: dict[str, ModelSamples], pairs: list[tuple[str, str]], level: float, seed: int) -> dict:
    """{"models": per-model summaries, "win_rates": {"A_vs_B": {"reward": ..., "gold": ...}}}."""
    wins = {}
    for ours, theirs in pairs:
        entry = {"reward": stats.paired_win_rate(samples[ours].rewards, samples[theirs].rewards, level, seed=seed)}
        if samples[ours].gold is not None and samples[theirs].gold is not None:
            entry["gold"] = stats.paired_win_rate(samples[ours].gold, samples[theirs].gold, level, seed=seed)
        wins[f"{ours}_vs_{theirs}"] = entry
    return {"models": {name: model_summary(s) for name, s in samples.items()}, "win_rates": wins}


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def table(summary: dict) -> str:
    """The summary as aligned text for the terminal."""
    has_gold = any(m["gold"] for m in summary["models"].values())
    header = ["model", "reward mean", "median", "std"] + (["gold mean", "gold std"] if has_gold else []) + [
        "tokens", "stopped", "KL(base)"]
    rows = [header]
    for name, m in summary["models"].items():
        reward, gold, kl = m["reward"], m["gold"], m["kl_from_base"]
        row = [name, _num(reward["mean"]), _num(reward["median"]), _num(reward["std"])]
        if has_gold:
            row += [_num(gold["mean"]) if gold else "-", _num(gold["std"]) if gold else "-"]
        row += [_num(m["response_tokens"]["mean"], 1), f"{100 * m['stopped_fraction']:.0f}%",
                _num(kl["mean"], 2) if kl else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths,
             strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for pair, entry in summary["win_rates"].items():
        ours, _, theirs = pair.partition("_vs_")
        for judge, w in entry.items():
            lines.append(
                f"win rate {ours} over {theirs} ({judge}): {w['win_rate']:.3f} "
                f"[{100 * w['level']:.0f}% CI {w['ci_low']:.3f}-{w['ci_high']:.3f}] "
                f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses of {w['prompts']} prompts); "
                f"mean difference {w['mean_difference']:+.3f} [{w['difference_ci_low']:+.3f}, {w['difference_ci_high']:+.3f}]"
            )
    return "\n".join(lines)


def sample_records(prompts: list, samples: dict[str, ModelSamples]) -> list[dict]:
    """One record per prompt and generation: the prompt, and each model's response, reward, gold score, KL."""
    records = []
    first = next(iter(samples.values()))
    for p, prompt in enumerate(prompts):
        for g in range(first.rewards.shape[1]):
            record = {"prompt": schemas.prompt_text(prompt), "generation": g}
            for name, s in samples.items():
                entry = {"response": s.responses[p][g], "reward": float(s.rewards[p, g]),
                         "tokens": int(s.tokens[p, g]), "stopped": bool(s.stopped[p, g])}
                if s.gold is not None:
                    entry["gold"] = float(s.gold[p, g])
                if s.kl is not None and not math.isnan(s.kl[p, g]):
                    entry["kl_from_base"] = float(s.kl[p, g])
                record[name] = entry
            records.append(record)
    return records


def plot(samples: dict[str, ModelSamples], history: list[dict] | None) -> bytes | None:
    """comparison.png: reward (and gold) distributions per model; with a PPO training log, its score and KL
    curves. None (and a log line) without matplotlib."""
    from rlhfkit import figures

    plt = figures.pyplot("comparison.png")
    if plt is None:
        return None
    has_gold = any(s.gold is not None for s in samples.values())
    panels = 1 + int(has_gold) + (2 if history else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8), squeeze=False)
    axes = list(axes[0])

    def distributions(ax, key: str, title: str):
        arrays = {name: getattr(s, key).ravel() for name, s in samples.items() if getattr(s, key) is not None}
        everything = np.concatenate(list(arrays.values()))
        bins = np.linspace(everything.min(), everything.max() + 1e-9, 25)
        for name, values in arrays.items():
            _, _, patches = ax.hist(values, bins=bins, histtype="step", lw=1.6,
                                    label=f"{name} (mean {values.mean():.2f})")
            ax.axvline(values.mean(), ls="--", lw=0.8, color=patches[0].get_edgecolor())
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("answers", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    distributions(axes.pop(0), "rewards", "reward-model score per answer")
    if has_gold:
        distributions(axes.pop(0), "gold", "gold-judge score per answer")
    if history:
        figures.curve(axes[0], history, "objective/scores", "PPO training: reward-model score")
        figures.curve(axes[1], history, "objective/kl", "PPO training: KL to the reference")
    return figures.png_bytes(fig)
