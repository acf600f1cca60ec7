"""rlhfkit/sampling.py: the one way every script samples.

* stop tokens: generation stops at the stop ids given and nowhere else (``--stop_token none``: never), and
  the mask covers exactly the real tokens;
* nothing of a checkpoint's own ``generation_config`` leaks into sampling (PPO, the comparison and
  run_generation.py sample from the same distribution whatever the checkpoint says);
* log-probs at the sampling temperature (hand-computed numbers).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import fixture_path

from rlhfkit import models, sampling

STORIES = ("models", "stories260K")
PROMPTS = ["Once upon a time", "The dog", "Lily and Tom went to the park", "One day, a little bird"]


def _stories_copy(tmp_path, **generation_settings):
    """A copy of stories260K whose generation_config.json carries ``generation_settings``."""
    folder = tmp_path / "stories"
    shutil.copytree(fixture_path(*STORIES), folder)
    path = folder / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(generation_settings)
    path.write_text(json.dumps(config))
    return str(folder)


def _sample(folder: str, stop_ids, max_new_tokens=24, do_sample=False, seed=0):
    tokenizer = models.load_tokenizer(folder, padding_side="left")
    model = models.load_causal_lm(folder).eval()
    _, ids = sampling.encode_prompts(tokenizer, PROMPTS, "raw")
    queries, mask = sampling.left_pad(ids, tokenizer.pad_token_id)
    config = sampling.generation_config(max_new_tokens, stop_ids, tokenizer.pad_token_id, do_sample=do_sample,
                                        temperature=0.7)
    torch.manual_seed(seed)
    return tokenizer, sampling.sample(model, tokenizer, PROMPTS, queries, mask, config, stop_ids)


# ------------------------------------------------------------------------------------------ stop tokens
def test_no_stop_tokens_means_every_response_runs_to_the_end(tmp_path):
    """With a checkpoint whose own EOS is '.', no stop ids still means no stop: no response ends early, no pad
    is counted as a response token (generate would otherwise fill the EOS from the checkpoint and pad)."""
    stories = str(fixture_path(*STORIES))
    dot = models.load_tokenizer(stories).convert_tokens_to_ids(".")
    folder = _stories_copy(tmp_path, eos_token_id=dot)
    tokenizer, episodes = _sample(folder, [], max_new_tokens=24)
    assert episodes.responses.shape == (len(PROMPTS), 24)
    assert episodes.response_mask.sum(-1).tolist() == [24] * len(PROMPTS)
    assert not episodes.stopped.any()
    assert (episodes.responses == dot).any()  # the model does write '.', and goes on after it
    # and stop ids given: generation stops at them, and only at them
    _, stopped = _sample(folder, [dot], max_new_tokens=24)
    lengths = stopped.response_mask.sum(-1)
    for row, length, done in zip(stopped.responses, lengths.tolist(), stopped.stopped.tolist(), strict=True):
        assert (row[:length] == dot).sum() == (1 if done else 0)
        if done:
            assert row[length - 1] == dot and (row[length:] == tokenizer.pad_token_id).all()


@pytest.mark.slow
def test_checkpoint_generation_settings_do_not_leak_into_sampling(tmp_path):
    """A checkpoint asking for a repetition penalty, n-gram blocking, min_p, typical_p, suppressed tokens, bad
    words and a minimum length samples exactly like the plain checkpoint, greedy and sampled."""
    stories = str(fixture_path(*STORIES))
    tokenizer = models.load_tokenizer(stories)
    the, was = tokenizer.convert_tokens_to_ids("▁the"), tokenizer.convert_tokens_to_ids("▁was")
    folder = _stories_copy(tmp_path, repetition_penalty=2.0, no_repeat_ngram_size=2, min_p=0.3, typical_p=0.2,
                           suppress_tokens=[the], bad_words_ids=[[was]], min_new_tokens=20,
                           top_k=3, temperature=0.1)
    eos = [tokenizer.eos_token_id]
    for do_sample in (False, True):
        _, plain = _sample(stories, eos, do_sample=do_sample, seed=3)
        _, loaded = _sample(folder, eos, do_sample=do_sample, seed=3)
        assert loaded.response_texts == plain.response_texts, do_sample
        assert torch.equal(loaded.responses, plain.responses)
    assert (plain.responses == the).any()  # the suppressed token would have changed the text
    # run_generation's path samples the same way
    model, plain_model = models.load_causal_lm(folder), models.load_causal_lm(stories)
    got = sampling.generate_text(model, models.load_tokenizer(folder), PROMPTS, "raw", max_new_tokens=24)
    expected = sampling.generate_text(plain_model, models.load_tokenizer(stories), PROMPTS, "raw", max_new_tokens=24)
    assert got.completions == expected.completions
    assert model.generation_config.no_repeat_ngram_size == 2  # the checkpoint's own settings are left as they were


# ---------------------------------------------------------------------------------------------- truncate
PAD = 99


def test_truncate_single_stop_id():
    responses = torch.tensor([[5, 9, 7, 8], [9, 3, 4, 5], [1, 2, 3, 4]])
    original = responses.clone()
    truncated, mask, stopped = sampling.truncate(responses, [9], PAD)
    # row 0: stop in the middle, kept, rest padded; row 1: stop at position 0; row 2: no stop at all
    assert truncated.tolist() == [[5, 9, PAD, PAD], [9, PAD, PAD, PAD], [1, 2, 3, 4]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert mask.dtype == torch.long
    assert mask.sum(-1).tolist() == [2, 1, 4]
    assert stopped.tolist() == [True, True, False]
    assert torch.equal(responses, original)  # the input is not modified


def test_truncate_several_ids_and_garbage():
    responses = torch.tensor([[5, 8, 9, 7, 6], [1, 2, 3, 4, 8], [6, 9, 9, 3, 8], [4, 4, 4, 4, 4]])
    truncated, mask, stopped = sampling.truncate(responses, (9, 8), PAD)
    # the first of either stop id ends the response; later stop ids and anything else after it are garbage
    assert truncated.tolist() == [
        [5, 8, PAD, PAD, PAD],
        [1, 2, 3, 4, 8],
        [6, 9, PAD, PAD, PAD],
        [4, 4, 4, 4, 4],
    ]
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert mask.sum(-1).tolist() == [2, 5, 2, 5]
    assert stopped.tolist() == [True, True, True, False]


def test_truncate_without_stop_ids_keeps_everything():
    responses = torch.tensor([[5, 9, PAD], [1, 2, 3]])
    truncated, mask, stopped = sampling.truncate(responses, [], PAD)
    assert torch.equal(truncated, responses) and mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert stopped.tolist() == [False, False]


# --------------------------------------------------------------------------------------------- log-probs
def assert_values(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert tuple(actual.shape) == tuple(expected.shape)
    torch.testing.assert_close(actual.detach().double(), expected, rtol=0.0, atol=atol)


def t(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def test_logprobs_from_logits_with_temperature():
    # B=2, T=2, V=3; temperature 2 halves the logits before the log-softmax
    logits = t([[[2.0, 4.0, 0.0], [0.0, 0.0, 0.0]], [[-2.0, 6.0, 2.0], [10.0, 0.0, 0.0]]])
    tokens = torch.tensor([[1, 2], [0, 0]])
    # /2: [1, 2, 0], [0, 0, 0], [-1, 3, 1], [5, 0, 0]
    lse_a = math.log(math.exp(1) + math.exp(2) + math.exp(0))
    lse_b = math.log(3.0)
    lse_c = math.log(math.exp(-1) + math.exp(3) + math.exp(1))
    lse_d = math.log(math.exp(5) + 2.0)
    expected = [[2 - lse_a, 0 - lse_b], [-1 - lse_c, 5 - lse_d]]
    got = sampling.logprobs_from_logits(logits, tokens, temperature=2.0)
    assert got.dtype == torch.float32
    assert_values(got, expected)
    # at temperature 1 the first value is 4 - log(e^2 + e^4 + 1): a different number, so temperature matters
    at_one = sampling.logprobs_from_logits(logits, tokens)
    assert_values(at_one[0, 0], 4 - math.log(math.exp(2) + math.exp(4) + 1))
    assert abs(at_one[0, 0].item() - got[0, 0].item()) > 0.1


def test_logprobs_from_logits_computes_in_float32():
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.bfloat16)  # p = [1/4, 3/4] (up to bf16 rounding)
    got = sampling.logprobs_from_logits(logits, torch.tensor([[0]]), temperature=0.5)
    assert got.dtype == torch.float32
    # /0.5: [0, 2 log 3] -> p = [1/10, 9/10]; bf16 rounds log 3 = 1.0986 to 1.1015625
    z = 2 * 1.1015625
    assert_values(got, [[-math.log(1 + math.exp(z))]])


