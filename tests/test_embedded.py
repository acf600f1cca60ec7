"""The embedded default: tiny Llama, offline tokenizer and toy data, built deterministically and atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit import embedded, toy

PROMPT = "Question: Describe the red bicycle.\n\nAnswer: The bicycle is great."


@pytest.fixture(scope="module")
def build_info(embedded_root):
    return json.loads((Path(embedded_root) / "BUILD_INFO.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer(embedded_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(embedded_root) / "model"))


@pytest.fixture(scope="module")
def model(embedded_root):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(Path(embedded_root) / "model"))


def test_build_info(embedded_root, build_info):
    root = Path(embedded_root)
    assert root == Path(embedded.default_dir(0))
    assert embedded.is_built(str(root))
    assert build_info["version"] == embedded.VERSION
    assert build_info["seed"] == 0
    assert build_info["splits"] == toy.SPLITS
    assert build_info["model"] == embedded.MODEL_CONFIG
    assert embedded.ensure() == str(root)  # cached: found, not rebuilt


def test_data_files(embedded_root):
    for name, size in toy.SPLITS.items():
        path = Path(embedded_root) / "data" / name / "train.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == size
        first = json.loads(lines[0])
        assert {"question", "response_j", "response_k"} <= set(first)


def test_model_is_a_small_llama(model, build_info):
    from transformers import LlamaForCausalLM

    assert isinstance(model, LlamaForCausalLM)
    assert model.config.model_type == "llama"
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= names
    assert model.config.num_hidden_layers == embedded.MODEL_CONFIG["num_hidden_layers"]
    count = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= count <= 10_000_000
    assert count == build_info["parameters"]


def test_model_matches_tokenizer(model, tokenizer, build_info):
    assert model.config.vocab_size == len(tokenizer) == build_info["vocab_size"]
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_weights_are_safetensors(embedded_root):
    files = {p.name for p in (Path(embedded_root) / "model").iterdir()}
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith(".bin")]


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens([tokenizer.pad_token_id, tokenizer.eos_token_id]) == ["<pad>", "</s>"]
    assert getattr(tokenizer, "chat_template", None) is None


def test_tokenizer_round_trips_the_prompt_format(tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT
    plain = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(plain) == PROMPT
    assert len(plain) < len(PROMPT) // 2  # trained on this format: far fewer tokens than characters


@pytest.mark.parametrize("text", ["What is the currency of the USA?", "Zürich café: 3½ €, naïve ☕ 日本"])
def test_tokenizer_encodes_any_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids
    if tokenizer.unk_token_id is not None:
        assert tokenizer.unk_token_id not in ids
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


def _tensors(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "model" / "model.safetensors"))


def _data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_build_is_deterministic(tmp_path, embedded_root):
    import torch

    # short pretraining keeps the test quick; the procedure is the same as the default build's
    first = Path(embedded.build(str(tmp_path / "a"), seed=0, pretrain_steps=20))
    second = Path(embedded.build(str(tmp_path / "b"), seed=0, pretrain_steps=20))
    assert first == tmp_path / "a" and second == tmp_path / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folders left behind

    a, b = _tensors(first), _tensors(second)
    assert a.keys() == b.keys()
    assert len(a) > 10
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((first / "BUILD_INFO.json").read_text()) == json.loads((second / "BUILD_INFO.json").read_text())
    # tokenizer and data do not depend on pretraining: equal to the cached default (also seed 0) too
    for other in (second, Path(embedded_root)):
        assert (first / "model" / "tokenizer.json").read_bytes() == (other / "model" / "tokenizer.json").read_bytes()
        assert _data_files(first) == _data_files(other)
        assert len(_data_files(first)) == 4


@pytest.mark.slow
def test_default_base_model_speaks_the_toy_language(embedded_root):
    """The pretrained base answers on topic (it copies the item), but has no taste: sampled answers score
    well below full marks, leaving SFT, reward modeling and PPO room to improve."""
    import random
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit import sampling

    info = json.loads((Path(embedded_root) / "BUILD_INFO.json").read_text())
    assert info["pretrain"]["loss"] < 1.0
    tokenizer = AutoTokenizer.from_pretrained(embedded_root / "model")
    model = AutoModelForCausalLM.from_pretrained(embedded_root / "model")
    questions = [toy.make_question(random.Random(f"held-out/{i}")) for i in range(64)]
    greedy = sampling.generate_text(model, tokenizer, questions, max_new_tokens=40, batch_size=64)
    on_topic = [toy.gold_score(q, c[0]) > -1 for q, c in zip(questions, greedy.completions, strict=True)]
    assert sum(on_topic) >= 0.6 * len(questions)  # it copies the item (51/64 when measured)
    torch.manual_seed(0)
    sampled = sampling.generate_text(model, tokenizer, questions, max_new_tokens=40, batch_size=64, do_sample=True)
    gold = statistics.mean(toy.gold_score(q, c[0]) for q, c in zip(questions, sampled.completions, strict=True))
    assert gold < 0.3  # far from full marks (-0.61 when measured)


@pytest.mark.slow
def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "write_dataset", interrupted)
    target = tmp_path / "x"
    with pytest.raises(KeyboardInterrupt):
        embedded.build(str(target), seed=0, pretrain_steps=2)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no .embedded-* staging folder either


def test_ensure_refuses_a_foreign_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    root = Path(embedded.default_dir(0))
    assert root.parent == tmp_path
    (root / "model").mkdir(parents=True)  # looks like a build, but was never finished
    with pytest.raises(RuntimeError, match="not a complete embedded build"):
        embedded.ensure(0)
    assert sorted(p.name for p in root.iterdir()) == ["model"]
