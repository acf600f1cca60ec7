"""The embedded toy task: short product reviews, judged by a rule (the *gold judge*) no model ever sees.

A question names an item (``Question: What do you think of the red bicycle?``); an answer is one to three
short sentences about it built from a small vocabulary with positive, negative and neutral adjectives. The
gold judge scores an answer in [-1, 1]:

* **off topic** (the item's noun is not mentioned, or the answer is empty): -1;
* otherwise the **enthusiasm** of the distinct polar adjectives used: (positive - negative) divided by
  max(:data:`FULL_MARKS_ADJECTIVES`, positive + negative). One positive adjective earns 1/3, three distinct
  positive ones earn full marks, a negative one costs as much as a positive one earns, neutral adjectives
  count for nothing, and repeating "great great great" earns no more than one "great";
* answers longer than :data:`MAX_WORDS` words lose 0.5 (rambling without stopping).

The data follows the stack-exchange-paired schema (``question`` / ``response_j`` / ``response_k``, ``j``
preferred) in stack-exchange-paired's sub-folders ``data/finetune``, ``data/reward``, ``data/evaluation`` and ``data/rl``.
Answers are written with a random *positivity*, so the finetune split holds answers of mixed quality: SFT
learns the format and the topic, a reward model can learn the preference from pairs ordered by the gold
judge, and PPO has room to raise the gold score above the SFT model's. Everything is deterministic given
the seed.
"""

from __future__ import annotations

import json
import os
import random
import re

ITEMS = (
    "bicycle", "camera", "garden", "hotel", "kettle", "lamp", "movie", "museum", "novel", "park", "phone",
    "piano", "pizza", "restaurant", "river", "sandwich", "school", "sofa", "song", "train", "umbrella", "watch",
    "bakery", "beach", "castle", "concert", "forest", "guitar", "jacket", "library", "market", "painting",
)
COLOURS = ("red", "blue", "green", "old", "new", "little", "big", "yellow")
POSITIVE = (
    "great", "lovely", "wonderful", "excellent", "fun", "bright", "friendly", "amazing", "delightful",
    "superb", "charming", "perfect",
)
NEGATIVE = (
    "awful", "boring", "dull", "terrible", "broken", "ugly", "noisy", "rude", "horrible", "poor", "dreadful",
    "sad",
)
NEUTRAL = ("small", "large", "quiet", "simple", "plain", "busy", "heavy", "light")
POLARITY = {**{w: 1 for w in POSITIVE}, **{w: -1 for w in NEGATIVE}}
MAX_WORDS = 40
# pairs: a quarter of answers miss the item, most by naming none, some by naming another one
PAIR_OFF_TOPIC = 0.25
PAIR_EVASIVE = 0.8
FULL_MARKS_ADJECTIVES = 3

QUESTIONS = (
    "What do you think of the {item}?",
    "Write a short review of the {item}.",
    "How was the {item}?",
    "Tell me about the {item}.",
    "Describe the {item}.",
)
SENTENCES = (
    "The {item} is {a}.",
    "The {item} is {a} and {b}.",
    "I think the {item} was very {a}.",
    "It was {a}.",
    "I found it {a} and {b}.",
    "My friends say the {item} is {a}.",
    "Overall a {a} {item}.",
)
SPLITS = {"finetune": 2000, "reward": 5000, "evaluation": 500, "rl": 1000}
_QUESTION_ITEM = re.compile(r"the ((?:\w+ )?(\w+))[?.]\s*$")


def item_of(question: str) -> str | None:
    """The item's noun named by a toy question (``"bicycle"`` for "... the red bicycle?"), or None."""
    match = _QUESTION_ITEM.search(question.strip())
    if not match or match.group(2) not in ITEMS:
        return None
    return match.group(2)


_TOY_QUESTION = re.compile(
    "|".join(re.escape(q).replace(re.escape("{item}"), r"(?:\w+ )?\w+") for q in QUESTIONS)
)


def is_toy_question(question: str) -> bool:
    """Whether ``question`` is one of the toy task's questions (so the gold judge applies to its answers)."""
    return bool(_TOY_QUESTION.fullmatch(question.strip())) and item_of(question) is not None


def gold_score(question: str, response: str) -> float:
    """The gold judge: a score in [-1, 1] for ``response`` to a toy ``question`` (see the module doc)."""
    item = item_of(question)
    words = re.findall(r"[a-z]+", response.lower())
    if not words or item is None or item not in words:
        return -1.0
    seen = set(w for w in words if w in POLARITY)
    score = sum(POLARITY[w] for w in seen) / max(FULL_MARKS_ADJECTIVES, len(seen))
    if len(words) > MAX_WORDS:
        score -= 0.5
    return max(-1.0, min(1.0, score))


def _adjective(rng: random.Random, positivity: float) -> str:
    draw = rng.random()
    if draw < 0.15:
        return rng.choice(NEUTRAL)
    return rng.choice(POSITIVE) if rng.random() < positivity else rng.choice(NEGATIVE)


def make_question(rng: random.Random) -> str:
    item = rng.choice(ITEMS)
    if rng.random() < 0.5:
        item = f"{rng.choice(COLOURS)} {item}"
    return rng.choice(QUESTIONS).format(item=item)


def make_answer(rng: random.Random, question: str, positivity: float, off_topic: float = 0.08,
                evasive: float = 0.0) -> str:
    """An answer of random length whose adjectives are positive with probability ``positivity``.

    With probability ``off_topic`` it misses the item: with probability ``evasive`` (of those) it names no
    item at all ("It was great."), otherwise it is about another item.
    """
    item = item_of(question) or rng.choice(ITEMS)
    if rng.random() < off_topic:
        if rng.random() < evasive:
            templates = [t for t in SENTENCES if "{item}" not in t]
            return " ".join(rng.choice(templates).format(a=_adjective(rng, positivity), b=_adjective(rng, positivity))
                            for _ in range(rng.choice((1, 2))))
        item = rng.choice([i for i in ITEMS if i != item])
    sentences = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        template = rng.choice(SENTENCES)
        sentences.append(template.format(item=item, a=_adjective(rng, positivity), b=_adjective(rng, positivity)))
    if not any(item in s for s in sentences):
        sentences[0] = f"The {item} is {_adjective(rng, positivity)}."
    return " ".join(sentences)


def make_pair(rng: random.Random) -> dict:
    """One stack-exchange-paired row: two answers of different gold score, the better as ``response_j``."""
    question = make_question(rng)
    while True:  # off-topic answers are common in pairs, so a reward model sees the rule being applied
        first = make_answer(rng, question, rng.random(), PAIR_OFF_TOPIC, PAIR_EVASIVE)
        second = make_answer(rng, question, rng.random(), PAIR_OFF_TOPIC, PAIR_EVASIVE)
        s1, s2 = gold_score(question, first), gold_score(question, second)
        if abs(s1 - s2) > 1e-9:
            break
    if s1 < s2:
        first, second, s1, s2 = second, first, s2, s1
    return {"question": question, "response_j": first, "response_k": second, "gold_j": s1, "gold_k": s2}


def generate(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Rows of every split, deterministic given ``seed`` (each split has its own random stream)."""
    sizes = dict(SPLITS if sizes is None else sizes)
    return {name: [make_pair(random.Random(f"{seed}/{name}/{i}")) for i in range(n)] for name, n in sizes.items()}


def write_dataset(root: str, seed: int = 0, sizes: dict[str, int] | None = None) -> str:
    """Write ``root/data/<split>/train.jsonl`` for each split; returns ``root``."""
    for name, rows in generate(seed, sizes).items():
        folder = os.path.join(root, "data", name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "train.jsonl"), "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return root


def corpus(seed: int = 0, n: int = 4000) -> list[str]:
    """Text to train the embedded tokenizer on: questions and answers in optimum-habana's prompt format."""
    rng = random.Random(f"{seed}/tokenizer")
    texts = []
    for _ in range(n):
        question = make_question(rng)
        texts.append(f"Question: {question}\n\nAnswer: {make_answer(rng, question, rng.random())}")
    # every word of the vocabulary at least once, whatever the draw
    texts.append(" ".join(ITEMS + COLOURS + POSITIVE + NEGATIVE + NEUTRAL))
    return texts


def sampled_gold(model, tokenizer, questions: list[str], samples: int = 4, temperature: float = 1.0,
                 max_new_tokens: int = 48, seed: int = 0) -> float:
    """The gold judge's mean over ``samples`` answers per question sampled from ``model`` (seeded).

    Sampled rather than greedy: the greedy answer of a model this small is one template per question ("The X is
    excellent."), whose score hinges on which adjective happens to be the mode, while the sampled mean measures the
    distribution training actually moves (fewer off-topic answers, more positive adjectives).
    """
    import torch

    from rlhfkit.sampling import generate_text

    torch.manual_seed(seed)
    result = generate_text(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=50, do_sample=True,
                           temperature=temperature, num_return_sequences=samples)
    if [len(c) for c in result.completions] != [samples] * len(questions):
        raise RuntimeError("sampled_gold: the sampler returned a different number of answers than asked for")
    scores = [gold_score(q, c) for q, cs in zip(questions, result.completions, strict=True) for c in cs]
    return sum(scores) / len(scores)
