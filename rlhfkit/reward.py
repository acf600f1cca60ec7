"""Reward-model scoring and the metrics of a preference evaluation.

:func:`score_texts` reads a sequence-classification model's scalar score for whole texts in batches (right
padding; transformers reads the score at the last non-pad token). :func:`pair_texts` builds the texts the
way TRL's ``RewardTrainer`` does (prompt + answer + EOS, or the chat template), so evaluation scores are
the ones training optimised. :func:`pair_metrics` is pure arithmetic on the two score lists.
"""

from __future__ import annotations

import math

from rlhfkit import schemas


def pair_texts(rendered: list[dict] | object, tokenizer) -> tuple[list[str], list[str]]:
    """(chosen texts, rejected texts) for rendered preference rows, formatted as ``RewardTrainer`` trains."""
    chosen, rejected = [], []
    conversational = schemas.has_chat_template(tokenizer)
    for row in rendered:
        for key, out in (("chosen", chosen), ("rejected", rejected)):
            if conversational:
                out.append(tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False))
            else:
                text = row["prompt"] + row[key]
                out.append(text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token)
    return chosen, rejected


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int | None = None) -> list[float]:
    """The model's scalar score of each text (no gradients), in order."""
    import torch

    device = next(model.parameters()).device
    add_special = not schemas.has_chat_template(tokenizer)
    old_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    scores: list[float] = []
    model.eval()
    try:
        for first in range(0, len(texts), batch_size):
            enc = tokenizer(texts[first : first + batch_size], return_tensors="pt", padding=True,
                            truncation=max_length is not None, max_length=max_length,
                            add_special_tokens=add_special).to(device)
            with torch.no_grad():
                logits = model(**enc).logits
            scores.extend(logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = old_side
    return scores


def auroc(positives: list[float], negatives: list[float]) -> float:
    """Area under the ROC curve separating ``positives`` from ``negatives`` (ties count half)."""
    if not positives or not negatives:
        return float("nan")
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), AUROC (chosen vs rejected scores), mean margin, score stats."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    everything = chosen + rejected
    mean = sum(everything) / len(everything)
    std = math.sqrt(sum((s - mean) ** 2 for s in everything) / len(everything))
    return {
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "auroc": auroc(chosen, rejected),
        "margin_mean": sum(margins) / len(margins),
        "score_mean": mean,
        "score_std": std,
        "chosen_score_mean": sum(chosen) / len(chosen),
        "rejected_score_mean": sum(rejected) / len(rejected),
        "pairs": float(len(margins)),
    }
