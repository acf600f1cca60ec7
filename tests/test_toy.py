"""The toy task: the gold judge on hand-written answers with known scores, and the pair generator."""

from __future__ import annotations

import json
import statistics

import pytest

from rlhfkit import toy

Q = "What do you think of the red bicycle?"


# --- the gold judge ---


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The camera is great and lovely.", -1.0),  # another item: off topic, however positive
        ("Great, wonderful, perfect!", -1.0),  # the item is never named
        ("The bicycles are great.", -1.0),  # "bicycles" is not the word "bicycle"
        ("", -1.0),
        ("   ", -1.0),
        ("...!?", -1.0),
        ("The bicycle is great and lovely. It was fun.", 1.0),
        ("The BICYCLE is GREAT.", 1 / 3),  # one positive adjective: a third of full marks
        ("The bicycle is great and awful.", 0.0),
        ("The bicycle is great and lovely. It was dull.", 1 / 3),  # (2 - 1) / 3
        ("The bicycle is awful and boring. It was great.", -1 / 3),
        ("The bicycle is great and lovely.", 2 / 3),
        ("The bicycle is great, lovely, fun and superb. It was awful.", 3 / 5),  # (4 - 1) / 5
        ("The bicycle is awful and dull.", -2 / 3),
        ("The bicycle is awful, dull and rude.", -1.0),
        ("I rode the bicycle to work.", 0.0),
        ("The bicycle is small, heavy and quiet.", 0.0),  # neutral adjectives do not count
        ("The bicycle is small and heavy and great.", 1 / 3),  # ... nor dilute the positive ones
        ("The bicycle is plain and awful.", -1 / 3),
    ],
)
def test_gold_score_known_cases(response, expected):
    assert toy.gold_score(Q, response) == pytest.approx(expected, abs=1e-12)


def test_repeated_adjective_counted_once():
    once = toy.gold_score(Q, "The bicycle is great.")
    assert once == pytest.approx(1 / 3)
    assert toy.gold_score(Q, "The bicycle is great great great.") == once
    # counted per occurrence this would be (3 - 1) / 4 = 0.5; distinct it is (1 - 1) / 3 = 0
    assert toy.gold_score(Q, "The bicycle is great. It was great and great. I found it awful.") == 0.0
    # and (2 - 1) / 3 = 1/3 with two distinct positives, however often the negative repeats
    assert toy.gold_score(Q, "The bicycle is awful, awful, awful but great and fun.") == pytest.approx(1 / 3)


def _words(n: int, head: str) -> str:
    filler = ["and", "then", "we", "went", "home"]
    words = head.split()
    words += [filler[i % len(filler)] for i in range(n - len(words))]
    assert len(words) == n
    return " ".join(words) + "."


def test_long_answers_lose_half_a_point():
    assert toy.MAX_WORDS == 40
    assert toy.gold_score(Q, _words(toy.MAX_WORDS, "The bicycle is great fun and lovely")) == 1.0
    assert toy.gold_score(Q, _words(toy.MAX_WORDS + 1, "The bicycle is great fun and lovely")) == 0.5
    assert toy.gold_score(Q, _words(toy.MAX_WORDS + 1, "The bicycle is great and awful")) == -0.5
    assert toy.gold_score(Q, _words(80, "The bicycle is awful dull and rude")) == -1.0  # -1.5 clamped
    assert toy.gold_score(Q, _words(80, "The camera is great")) == -1.0


def test_question_not_from_the_toy_task():
    assert toy.gold_score("What is the currency of the USA?", "The USA uses the dollar, which is great.") == -1.0
    assert toy.gold_score("Tell me about the red spaceship.", "The spaceship is great.") == -1.0
    assert toy.gold_score("Hello", "The bicycle is great.") == -1.0


@pytest.mark.parametrize(
    "question, item",
    [
        ("What do you think of the red bicycle?", "bicycle"),
        ("How was the pizza?", "pizza"),
        ("Describe the little museum.", "museum"),
        ("Write a short review of the hotel.", "hotel"),
        ("Question: Describe the red bicycle.", "bicycle"),
        ("  Tell me about the yellow umbrella.  ", "umbrella"),
        ("What is the currency of the USA?", None),
        ("Tell me about the red spaceship.", None),
        ("", None),
    ],
)
def test_item_of(question, item):
    assert toy.item_of(question) == item


def test_generated_questions_name_an_item():
    rows = toy.generate(seed=3, sizes={"reward": 60})["reward"]
    assert all(toy.item_of(row["question"]) in toy.ITEMS for row in rows)
    assert any(c in row["question"].split() for row in rows for c in toy.COLOURS)  # some with a colour
    assert any(not set(toy.COLOURS) & set(row["question"].split()) for row in rows)  # some without


# --- the generator ---

SMALL = {"finetune": 30, "reward": 20, "evaluation": 5, "rl": 7}


def test_generate_is_deterministic_for_a_seed():
    first = toy.generate(seed=0, sizes=SMALL)
    second = toy.generate(seed=0, sizes=SMALL)
    assert first == second
    assert {name: len(rows) for name, rows in first.items()} == SMALL


def test_generate_differs_for_another_seed():
    a = toy.generate(seed=0, sizes=SMALL)
    b = toy.generate(seed=1, sizes=SMALL)
    for name in SMALL:
        assert a[name] != b[name]
        assert sum(x != y for x, y in zip(a[name], b[name], strict=True)) > len(a[name]) // 2


def test_splits_have_their_own_streams():
    alone = toy.generate(seed=0, sizes={"rl": 7})["rl"]
    assert toy.generate(seed=0, sizes=SMALL)["rl"] == alone
    assert toy.generate(seed=0, sizes={"rl": 12})["rl"][:7] == alone
    assert toy.generate(seed=0, sizes=SMALL)["finetune"][:7] != alone  # not the same rows under another name


def test_pairs_are_ordered_by_the_gold_judge():
    data = toy.generate(seed=5, sizes={"finetune": 150, "reward": 150})
    for rows in data.values():
        for row in rows:
            assert set(row) == {"question", "response_j", "response_k", "gold_j", "gold_k"}
            assert row["gold_j"] > row["gold_k"]
            assert row["gold_j"] == toy.gold_score(row["question"], row["response_j"])
            assert row["gold_k"] == toy.gold_score(row["question"], row["response_k"])
            assert -1.0 <= row["gold_k"] < row["gold_j"] <= 1.0
            assert row["response_j"] != row["response_k"]


def test_write_dataset(tmp_path):
    assert set(toy.SPLITS) == {"finetune", "reward", "evaluation", "rl"}
    root = toy.write_dataset(str(tmp_path), seed=0, sizes=SMALL)
    assert root == str(tmp_path)
    expected = toy.generate(seed=0, sizes=SMALL)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(SMALL)
    for name, size in SMALL.items():
        path = tmp_path / "data" / name / "train.jsonl"
        assert path.is_file()
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == size
        assert [json.loads(line) for line in lines] == expected[name]


def test_preferred_answers_are_better_on_average():
    rows = toy.generate(seed=0, sizes={"finetune": 300})["finetune"]
    mean_j = statistics.mean(r["gold_j"] for r in rows)
    mean_k = statistics.mean(r["gold_k"] for r in rows)
    assert mean_j > mean_k + 0.5


def test_finetune_split_has_a_spread_of_quality():
    rows = toy.generate(seed=0, sizes={"finetune": 300})["finetune"]
    gold_j = [r["gold_j"] for r in rows]
    below = sum(g < 0.5 for g in gold_j) / len(gold_j)
    assert 0.2 < below < 0.8, below  # room for PPO above what SFT imitates
    assert statistics.mean(gold_j) < 0.8
    assert max(gold_j) == 1.0
    assert len(set(gold_j)) >= 5
    # the rejected side reaches the bottom of the range (off-topic or all-negative answers)
    all_scores = gold_j + [r["gold_k"] for r in rows]
    assert min(all_scores) == -1.0


def test_corpus_covers_the_vocabulary():
    text = " ".join(toy.corpus(seed=0, n=20))
    words = set(text.replace("?", " ").replace(".", " ").split())
    for word in toy.ITEMS + toy.COLOURS + toy.POSITIVE + toy.NEGATIVE + toy.NEUTRAL:
        assert word in words
    assert toy.corpus(seed=0, n=20) == toy.corpus(seed=0, n=20)
    assert toy.corpus(seed=0, n=20)[0].startswith("Question: ")
    assert "\n\nAnswer: " in toy.corpus(seed=0, n=20)[0]
