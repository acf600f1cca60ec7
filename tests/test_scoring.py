"""rlhfkit/scoring.py: the one way every script scores, read as reward_modeling.py trained the reward model.

TRL's RewardTrainer trains on prompt + answer + EOS and transformers reads the score at the rightmost token
that is not the config's pad id. With a GPT-2-style tokenizer (pad == EOS) that is the token before the EOS;
PPO, the comparison and the held-out evaluation must read the same token.
"""

from __future__ import annotations

import pytest
import torch

import ppo as ppo_script
from rlhfkit import models, sampling, scoring


@pytest.fixture(scope="module")
def pad_is_eos(embedded_root):
    """(policy tokenizer with a distinct pad, reward tokenizer padding with EOS, reward model trained that way)."""
    folder = str(embedded_root / "model")
    policy_tokenizer = ppo_script.policy_tokenizer(folder, False, lambda tok: models.stop_token_ids("eos", tok))
    reward_tokenizer = models.load_tokenizer(folder)
    reward_tokenizer.pad_token = reward_tokenizer.eos_token  # GPT-2 style, as ensure_pad_token does
    torch.manual_seed(11)
    model = models.load_sequence_classifier(folder, pad_token_id=reward_tokenizer.eos_token_id).eval()
    return policy_tokenizer, reward_tokenizer, model


def _episode(tokenizer, prompt: str, answer: str):
    _, ids = sampling.encode_prompts(tokenizer, [prompt])
    queries, query_mask = sampling.left_pad(ids, tokenizer.pad_token_id)
    response = torch.tensor([tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    responses, mask, stopped = sampling.truncate(response, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    return sampling.Episodes([prompt], queries, query_mask, responses, mask, stopped, [answer])


def test_pad_equal_to_eos_reads_the_score_where_training_did(pad_is_eos):
    policy_tokenizer, reward_tokenizer, model = pad_is_eos
    episodes = _episode(policy_tokenizer, "How was the pizza?", " The pizza is great.")
    row = torch.cat([episodes.queries[0][episodes.query_mask[0].bool()], episodes.responses[0]])
    assert row[-1] == reward_tokenizer.eos_token_id
    with torch.no_grad():
        trained = model(input_ids=row.unsqueeze(0)).logits[0, 0].item()  # transformers' own read, as in training
        hidden = model.model(input_ids=row.unsqueeze(0)).last_hidden_state[0]
        at_eos, before_eos = model.score(hidden[-1]).item(), model.score(hidden[-2]).item()
    assert trained == pytest.approx(before_eos, abs=1e-5) and abs(at_eos - before_eos) > 1e-3  # the test can tell
    # the same reward model through both episode paths (token ids reused; decoded and re-tokenised) and as text
    for reuse_ids in (True, False):
        scorer = scoring.RewardModelScorer(model, reward_tokenizer, policy_tokenizer)
        assert scorer.reuse_ids  # same vocabulary: ids reused unless told otherwise
        scorer.reuse_ids = reuse_ids
        score = scorer(episodes.prompts, episodes.queries, episodes.query_mask, episodes.responses,
                       episodes.response_mask, episodes.stopped, episodes.response_texts)
        assert score.item() == pytest.approx(trained, abs=1e-5), scorer.reuse_ids
    text = "Question: How was the pizza?\n\nAnswer: The pizza is great." + reward_tokenizer.eos_token
    assert scoring.score_texts(model, reward_tokenizer, [text])[0] == pytest.approx(trained, abs=1e-5)


def test_score_texts_batched_equals_alone_and_transformers(pad_is_eos):
    _, reward_tokenizer, model = pad_is_eos
    texts = ["Question: Describe the lamp.\n\nAnswer: It is bright." + reward_tokenizer.eos_token,
             "Question: Hi\n\nAnswer: Hello there, how are you doing today my friend?" + reward_tokenizer.eos_token,
             "Question: How was it?\n\nAnswer:"]
    batched = scoring.score_texts(model, reward_tokenizer, texts, batch_size=3)
    reward_tokenizer.padding_side = "right"
    enc = reward_tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**enc).logits[:, 0].tolist()  # pads are EOS: transformers skips them all
    assert batched == pytest.approx(expected, abs=1e-5)


def test_reward_model_keeps_the_pad_id_it_was_trained_with(pad_is_eos, tmp_path):
    """Loaded for PPO with the policy's tokenizer (which gained a pad token), the reward model still reads its
    score by the pad id saved with it."""
    policy_tokenizer, reward_tokenizer, model = pad_is_eos
    folder = tmp_path / "rm"
    model.save_pretrained(folder)  # no tokenizer saved: PPO falls back to the policy's
    loaded, tokenizer = scoring.load_reward_model(str(folder), None, policy_tokenizer, None, "cpu")
    assert tokenizer is policy_tokenizer and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert scoring.trained_pad_id(loaded) == reward_tokenizer.eos_token_id
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
