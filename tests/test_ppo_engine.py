"""The PPO engine's pieces on real (tiny) models, in process: tokens, log-probs, the reference, the reward read.

Each test pins one thing the N+ implementation details (Huang et al. 2024) and upstream bug reports say goes
wrong: the pad token colliding with EOS, log-probs computed at a temperature other than the sampling one,
left padding shifting positions, the reference not being the starting policy, the reward read on the wrong
token, a reward model with another tokenizer.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import ppo as ppo_script
from rlhfkit import models, sampling, scoring
from rlhfkit.errors import UserError
from rlhfkit.ppo.policy import (
    PolicyAndValue,
    SamplingMerge,
    logprobs_and_values,
    merged_for_sampling,
    rollout_logprobs_and_values,
    rollout_logprobs_source,
)

STORIES = ("models", "stories260K")
GPT2_TOKENIZER = ("tokenizers", "gpt2")


@pytest.fixture(scope="module")
def base(embedded_root):
    """(model folder, policy tokenizer with a distinct pad, PolicyAndValue with LoRA, plain base model)."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit import models

    folder = str(embedded_root / "model")
    tokenizer = ppo_script.policy_tokenizer(folder, False, lambda tok: models.stop_token_ids("eos", tok))
    torch.manual_seed(0)
    lora = get_peft_model(models.load_causal_lm(folder), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                   lora_dropout=0.0))
    module = PolicyAndValue(lora).eval()
    return folder, tokenizer, module, models.load_causal_lm(folder).eval()


def _episodes(tokenizer, prompts: list[str], responses: list[list[int]]):
    """Left-padded prompts and right-padded responses, as a rollout builds them."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    queries = torch.full((len(ids), width), tokenizer.pad_token_id)
    query_mask = torch.zeros_like(queries)
    for i, row in enumerate(ids):
        queries[i, width - len(row):], query_mask[i, width - len(row):] = torch.tensor(row), 1
    longest = max(map(len, responses))
    padded = torch.stack([torch.nn.functional.pad(torch.tensor(r), (0, longest - len(r)), value=tokenizer.pad_token_id)
                          for r in responses])
    truncated, mask, stopped = sampling.truncate(padded, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    # as in generation: a response that never stopped ran to the full width
    assert all(len(r) == longest for r, s in zip(responses, stopped.tolist(), strict=True) if not s)
    texts = tokenizer.batch_decode(truncated, skip_special_tokens=True)
    return sampling.Episodes(prompts, queries, query_mask, truncated, mask, stopped, texts)


# ------------------------------------------------------------------------------------------ tokens
def test_pad_token_is_added_when_the_tokenizer_pads_with_eos(embedded_root, tmp_path):
    from rlhfkit import models

    folder = tmp_path / "tok"
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    tokenizer.pad_token = tokenizer.eos_token  # what optimum-habana's PPO script and many others do
    tokenizer.save_pretrained(folder)
    fixed = ppo_script.policy_tokenizer(str(folder), False, lambda tok: models.stop_token_ids("eos", tok))
    assert fixed.pad_token_id is not None and fixed.pad_token_id != fixed.eos_token_id
    assert fixed.padding_side == "left"


def test_gpt2_tokenizer_without_pad_gets_a_distinct_one():
    from conftest import fixture_path

    path = str(fixture_path(*GPT2_TOKENIZER))
    tokenizer = ppo_script.policy_tokenizer(path, False, lambda tok: models.stop_token_ids("eos", tok))
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    assert models.stop_token_ids("eos", tokenizer) == [tokenizer.eos_token_id]
    assert models.stop_token_ids("none", tokenizer) == []
    with pytest.raises(UserError, match="not one token"):
        models.stop_token_ids("two words", tokenizer)


# ---------------------------------------------------------------------------------------- log-probs
def test_logprobs_match_the_sampling_distribution_of_generate(base):
    """Log-probs from one forward pass over a left-padded batch equal those of generate's own (temperature-
    warped) scores: same temperature, same positions."""
    _, tokenizer, module, _ = base
    prompts = ["Question: Describe the red lamp.\n\nAnswer:", "Question: How was the pizza?\n\nAnswer:",
               "Question: Tell me about the old castle by the river.\n\nAnswer:"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, 0] == 0).any()  # really left-padded
    temperature = 0.7
    config = sampling.generation_config(12, [tokenizer.eos_token_id], tokenizer.pad_token_id, temperature=temperature)
    torch.manual_seed(1)
    out = module.policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 generation_config=config, output_scores=True, return_dict_in_generate=True)
    responses = out.sequences[:, enc["input_ids"].shape[1]:]
    truncated, mask, stopped = sampling.truncate(responses, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    episodes = sampling.Episodes(prompts, enc["input_ids"], enc["attention_mask"], truncated, mask, stopped,
                                [""] * len(prompts))
    with torch.no_grad():
        logprobs, values, _ = logprobs_and_values(module, episodes, temperature)
    expected = torch.stack([s.log_softmax(-1) for s in out.scores], 1)  # scores are already divided by T
    expected = expected.gather(2, responses.unsqueeze(-1)).squeeze(-1)
    real = mask.bool()
    assert torch.allclose(logprobs[real], expected[real], atol=1e-4), (logprobs[real] - expected[real]).abs().max()
    wrong_t = sampling.logprobs_from_logits(torch.stack(out.scores, 1) * temperature, responses, 1.0)
    assert not torch.allclose(wrong_t[real], logprobs[real], atol=1e-3)  # the check can tell temperatures apart
    assert values.shape == logprobs.shape and torch.all(values == 0)  # the value head starts at zero


@pytest.mark.parametrize("critic", [False, True])
def test_rollout_logprobs_and_values_from_generation_match_a_forward_pass(base, critic):
    """What generation computed for each sampled token (the LM head's input and output, traced) gives the same
    log-probs and values as a forward pass over the left-padded prompts and the responses cut at their stop
    token, up to float32 rounding: the same positions, mask and temperature (checked at a wrong temperature and
    one position off, which it can tell apart). A separate critic's values come from its own forward pass."""
    import copy

    _, tokenizer, module, plain = base
    module = copy.deepcopy(module)
    if critic:
        module = PolicyAndValue(module.policy, critic=models.load_sequence_classifier(
            base[0], pad_token_id=tokenizer.pad_token_id)).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name or "value_head" in name or "score" in name:
                p.normal_(0, 0.05 if "lora_B" in name else 0.3)  # they start at zero: make them matter
    prompts = ["Question: Describe the red lamp.\n\nAnswer:", "Question: How was the pizza?\n\nAnswer:",
               "Question: Tell me about the old castle by the river.\n\nAnswer:", "Question: Why?\n\nAnswer:"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, 0] == 0).any()  # really left-padded
    torch.manual_seed(1)  # a token the first row samples early becomes the stop token: some rows are cut
    probe = sampling.generate(module.policy, enc["input_ids"], enc["attention_mask"],
                              sampling.generation_config(16, [], tokenizer.pad_token_id, temperature=0.7))
    stop_ids = [int(probe[0, 3])]
    config = sampling.generation_config(16, stop_ids, tokenizer.pad_token_id, temperature=0.7)
    torch.manual_seed(1)
    episodes = sampling.sample(module.policy, tokenizer, prompts, enc["input_ids"], enc["attention_mask"], config,
                               stop_ids, trace=True)
    assert episodes.stopped.any() and (episodes.response_mask == 0).any()  # cut rows: padding after a stop
    assert len(episodes.trace.logits) == episodes.responses.shape[1]
    with torch.no_grad():
        traced_lp, traced_v = rollout_logprobs_and_values(module, episodes, 0.7)
        forward_lp, forward_v, _ = logprobs_and_values(module, episodes, 0.7)
    real = episodes.response_mask.bool()
    assert (traced_lp[real] - forward_lp[real]).abs().max() < 1e-4
    assert (traced_v[real] - forward_v[real]).abs().max() < 1e-4 and forward_v[real].abs().max() > 1e-2
    wrong_t = episodes.trace.logprobs(episodes.responses, 1.0)
    assert (wrong_t[real] - forward_lp[real]).abs().max() > 1e-2
    shifted = torch.cat([traced_lp[:, 1:], traced_lp[:, :1]], 1)
    assert (shifted[real] - forward_lp[real]).abs().max() > 1e-2


def test_a_generation_trace_takes_the_head_calls_of_the_tokens_generated():
    """Synced generation (ZeRO-3, FSDP) may call the model after this process's sequences are done: the trace
    keeps the first call per generated token; fewer calls than tokens is an error, not a silent misalignment."""
    calls = [(torch.full((2, 3), float(i)), torch.full((2, 5), float(i))) for i in range(6)]
    trace = sampling._trace_of(calls, 4)
    assert [int(h[0, 0]) for h in trace.hidden] == [0, 1, 2, 3] and trace.hidden_states().shape == (2, 4, 3)
    with pytest.raises(RuntimeError, match="--rollout_logprobs forward"):
        sampling._trace_of(calls, 7)


@pytest.mark.parametrize(("choice", "dtype", "batched", "hpu", "gathered", "expected"), [
    ("auto", torch.float32, True, False, True, "generation"),
    ("auto", torch.bfloat16, True, False, True, "forward"),
    ("auto", torch.float32, False, False, True, "forward"),
    ("auto", torch.float32, True, True, True, "forward"),
    ("auto", torch.float32, True, False, False, "forward"),
    ("forward", torch.float32, True, False, True, "forward"),
    ("generation", torch.bfloat16, True, False, True, "generation"),
    ("generation", torch.float32, True, True, True, "HPU graph"),
    ("generation", torch.float32, True, False, False, "ds3_gather_for_generation"),
])
def test_where_the_rollout_logprobs_come_from(choice, dtype, batched, hpu, gathered, expected):
    if expected in ("generation", "forward"):
        source, why = rollout_logprobs_source(choice, dtype, batched, hpu, gathered)
        assert source == expected and why
    else:
        with pytest.raises(UserError, match=expected):
            rollout_logprobs_source(choice, dtype, batched, hpu, gathered)


def test_left_padding_does_not_change_logprobs(base):
    _, tokenizer, module, _ = base
    short, long = "Question: How was the pizza?\n\nAnswer:", "Question: Tell me about the old castle.\n\nAnswer:"
    answer = tokenizer(" The pizza is great.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    together = _episodes(tokenizer, [short, long], [answer, answer])
    alone = _episodes(tokenizer, [short], [answer])
    assert together.query_mask[0].sum() < together.query_mask.shape[1]  # the short prompt is padded
    with torch.no_grad():
        batch_lp, batch_v, _ = logprobs_and_values(module, together, 0.7)
        alone_lp, alone_v, _ = logprobs_and_values(module, alone, 0.7)
    assert torch.allclose(batch_lp[0], alone_lp[0], atol=1e-5)


def test_reference_is_the_policy_with_its_adapter_disabled(base):
    """The LoRA reference equals the base model exactly, and stays so after the adapter changes."""
    _, tokenizer, module, plain = base
    answer = tokenizer(" It was lovely.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    episodes = _episodes(tokenizer, ["Question: Describe the sofa.\n\nAnswer:"], [answer])
    with torch.no_grad():
        lora_b = [p for n, p in module.named_parameters() if "lora_B" in n]
        for p in lora_b:
            p.normal_(0, 0.5)  # LoRA B starts at zero; make the adapter matter
        policy_lp, _, _ = logprobs_and_values(module, episodes, 1.0)
        with module.reference(None) as reference:
            ref_lp = sampling.response_logprobs(reference, episodes, 1.0)
        plain_lp = sampling.response_logprobs(plain, episodes, 1.0)
        for p in lora_b:
            p.zero_()
    assert torch.allclose(ref_lp, plain_lp, atol=1e-5)
    assert not torch.allclose(policy_lp, ref_lp, atol=1e-3)
    assert not hasattr(plain, "peft_config")
    assert len({id(p) for p in module.policy.parameters()}) == len(list(module.policy.parameters()))


def test_sampling_with_the_adapter_merged_samples_the_same_and_restores_the_weights(base):
    """The rollout samples with LoRA folded into the float32 weights: the same tokens as the unmerged policy from
    the same seed, the base weights (the reference) back within float32 rounding afterwards, and nothing merged
    in bf16 (where one round trip moves a weight by 6.4e-3 of the largest: bench/merge_drift.py) or on a model
    without an adapter."""
    folder, tokenizer, module, plain = base
    prompts = ["Question: Describe the red lamp.\n\nAnswer:", "Question: How was the pizza?\n\nAnswer:"]
    queries, query_mask = sampling.left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    config = sampling.generation_config(16, [tokenizer.eos_token_id], tokenizer.pad_token_id, temperature=0.7)
    policy = module.policy
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    base_weights = {n: p.detach().clone() for n, p in policy.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.3)  # LoRA B starts at zero; make the adapter matter
    try:
        runs = {}
        for merge in (False, True):
            torch.manual_seed(3)
            with merged_for_sampling(policy, allowed=merge) as merged:
                assert merged == merge
                runs[merge] = sampling.generate(policy, queries, query_mask, config)
            assert not any(getattr(m, "merged", False) for m in policy.modules())  # taken back out
        assert torch.equal(runs[True], runs[False])
        with policy.disable_adapter():
            torch.manual_seed(3)
            reference = sampling.generate(policy, queries, query_mask, config)
        assert not torch.equal(reference, runs[True])  # the adapter changes what is sampled: the check can fail
        for name, p in policy.named_parameters():
            if name in base_weights:
                assert torch.allclose(p, base_weights[name], rtol=0, atol=1e-6), name
    finally:
        with torch.no_grad():
            for p in lora_b:
                p.zero_()
    with merged_for_sampling(plain) as merged:
        assert not merged  # no adapter
    from peft import LoraConfig, get_peft_model

    half = get_peft_model(models.load_causal_lm(folder, dtype=torch.bfloat16), LoraConfig(r=4, lora_alpha=8,
                                                                                          target_modules="all-linear"))
    with merged_for_sampling(half) as merged:
        assert not merged  # bf16: never merged


def test_sampling_merge_modes_and_the_timed_choice():
    """--merge_adapter_for_generation: "on" / "off" fixed; "auto" samples rollout 1 unmerged (warm-up), 2 merged, 3
    unmerged, then keeps the faster per decoding step as the processes average it (unmerged on a tie), and in a
    run too short to pay for the trial samples unmerged; nothing is merged where merging is impossible."""
    for mode in ("on", "off", "auto"):
        never = SamplingMerge(mode, possible=False, steps=100)
        assert [never.now() for _ in range(4)] == [False] * 4 and never.choice is False
    short = SamplingMerge("auto", possible=True, steps=SamplingMerge.MIN_STEPS - 1)  # no trial in a short run
    assert short.choice is False and short.record(False, 1.0, None) is None and not short.now()
    on, off = SamplingMerge("on", True, 3), SamplingMerge("off", True, 100)
    assert on.now() and on.record(True, 1.0, None) is None and on.now()
    assert not off.now() and off.record(False, 1.0, None) is None and not off.now()

    def run(merged_s: float, unmerged_s: float, average=lambda a, b: (a, b)):
        auto = SamplingMerge("auto", possible=True, steps=SamplingMerge.MIN_STEPS)
        seen = []
        for rollout in range(5):
            merge = auto.now()
            seen.append(merge)
            # rollout 1 (the warm-up) is slow and must not count
            said = auto.record(merge, merged_s if merge else unmerged_s if rollout else 99.0, average)
            assert (said is not None) == (rollout == 2), (rollout, said)
        return seen, auto

    seen, auto = run(0.5, 1.0)
    assert seen == [False, True, False, True, True] and auto.choice is True
    assert auto.timed == {True: 0.5, False: 1.0}
    seen, auto = run(1.0, 0.5)
    assert seen == [False, True, False, False, False] and auto.choice is False
    _, tie = run(1.0, 1.0)
    assert tie.choice is False
    # the processes' average decides, not this process's own timing
    _, averaged = run(0.5, 1.0, average=lambda a, b: (a + 1.0, b))
    assert averaged.choice is False and averaged.timed == {True: 1.5, False: 1.0}


def test_checkpoint_state_round_trip(base):
    _, _, module, _ = base
    state = module.trainable_state()
    assert any("lora_A" in k for k in state) and "value_head.weight" in state
    with torch.no_grad():
        module.value_head.weight.fill_(3.0)
    module.load_trainable_state(state)
    assert torch.all(module.value_head.weight == 0)
    with pytest.raises(UserError, match="does not match"):
        module.load_trainable_state({k: v for k, v in state.items() if k != "value_head.bias"})


# -------------------------------------------------------------------------------------- the reward read
@pytest.fixture(scope="module")
def reward_model(base):
    from rlhfkit import models

    folder, tokenizer, _, _ = base
    torch.manual_seed(3)
    model = models.load_sequence_classifier(folder, pad_token_id=tokenizer.pad_token_id).eval()
    model.resize_token_embeddings(len(tokenizer))
    return model


def test_reward_is_read_at_the_last_real_token(base, reward_model):
    """Scores of a padded batch equal the model's score of each exact text alone, read at its last token (the
    EOS when the response stopped), never at a pad after it."""
    _, tokenizer, _, _ = base
    eos = tokenizer.eos_token_id
    stopped = tokenizer(" The lamp is great.", add_special_tokens=False)["input_ids"] + [eos, 7, 9]  # junk after EOS
    running = tokenizer(" I think the lamp was very very lovely and", add_special_tokens=False)["input_ids"]
    stopped += [9] * (len(running) - len(stopped))
    episodes = _episodes(tokenizer, ["Question: Describe the lamp.\n\nAnswer:", "Question: How was it?\n\nAnswer:"],
                         [stopped, running])
    assert episodes.stopped.tolist() == [True, False]
    scorer = scoring.RewardModelScorer(reward_model, tokenizer, tokenizer)
    assert scorer.reuse_ids
    scores = scorer(episodes.prompts, episodes.queries, episodes.query_mask, episodes.responses,
                    episodes.response_mask, episodes.stopped, episodes.response_texts)
    for i, row in enumerate([stopped[: stopped.index(eos) + 1], running]):
        ids = torch.tensor([episodes.queries[i][episodes.query_mask[i].bool()].tolist() + row])
        with torch.no_grad():
            hidden = reward_model.model(input_ids=ids).last_hidden_state
            alone = reward_model.score(hidden[0, -1]).item()
            after = reward_model.score(hidden[0, -2]).item()
        assert scores[i].item() == pytest.approx(alone, abs=1e-4)
        assert scores[i].item() != pytest.approx(after, abs=1e-4)
    text_path = scoring.RewardModelScorer(reward_model, tokenizer, tokenizer)
    text_path.reuse_ids = False  # decode and re-tokenise: the same tokenizer must give the same scores
    again = text_path(episodes.prompts, episodes.queries, episodes.query_mask, episodes.responses,
                      episodes.response_mask, episodes.stopped, episodes.response_texts)
    assert torch.allclose(scores, again, atol=1e-4)


def test_reward_model_with_another_tokenizer(base):
    """A reward model with a different vocabulary (stories260K) scores the decoded text of each episode."""
    from conftest import fixture_path

    from rlhfkit import models

    folder = str(fixture_path(*STORIES))
    _, tokenizer, _, _ = base
    rm_tokenizer = models.load_tokenizer(folder)
    if rm_tokenizer.pad_token_id is None:
        rm_tokenizer.pad_token = rm_tokenizer.eos_token
    torch.manual_seed(5)
    rm = models.load_sequence_classifier(folder, pad_token_id=rm_tokenizer.pad_token_id).eval()
    scorer = scoring.RewardModelScorer(rm, rm_tokenizer, tokenizer)
    assert not scorer.reuse_ids
    answer = tokenizer(" The garden is lovely.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    episodes = _episodes(tokenizer, ["Question: Describe the garden.\n\nAnswer:"], [answer])
    score = scorer(episodes.prompts, episodes.queries, episodes.query_mask, episodes.responses,
                   episodes.response_mask, episodes.stopped, episodes.response_texts)
    text = "Question: Describe the garden.\n\nAnswer: The garden is lovely." + rm_tokenizer.eos_token
    ids = torch.tensor([rm_tokenizer(text)["input_ids"]])
    with torch.no_grad():  # transformers' own read (pad == EOS here: the token before the EOS)
        expected = rm(input_ids=ids).logits[0, 0].item()
    assert score.item() == pytest.approx(expected, abs=1e-4)


def test_rule_reward_from_a_file(tmp_path):
    rule = tmp_path / "rule.py"
    rule.write_text("def reward(prompt, response):\n    return float(response.count('a'))\n")
    scorer = scoring.load_rule(f"{rule}:reward")
    scores = scorer(["p", "q"], None, None, None, None, None, ["banana", "kiwi"])
    assert scores.tolist() == [3.0, 0.0]
    with pytest.raises(UserError, match="no function"):
        scoring.load_rule(f"{rule}:missing")
    with pytest.raises(UserError, match="MODULE:FUNCTION"):
        scoring.load_rule("nonsense")
    assert scoring.load_rule("toy")(["How was the pizza?"], None, None, None, None, None,
                                    ["The pizza is great."]).item() == pytest.approx(1 / 3)


def test_a_sharded_checkpoint_is_published_only_after_every_process_has_written(tmp_path, monkeypatch):
    """accelerate's save_state writes each process's random states after its collective part: the main process
    must wait for the others before renaming the staging folder into place (a process that was still writing
    found its folder gone)."""
    import os
    import types

    from rlhfkit import checkpoints, sharding
    from rlhfkit.ppo import trainer as ppo_trainer

    events = []

    class Accelerator:
        is_main_process = True

        def wait_for_everyone(self):
            events.append("wait")

        def save_state(self, path):
            os.makedirs(path)
            events.append("save_state")

    state = types.SimpleNamespace(state_dict=lambda: {})
    fake = types.SimpleNamespace(
        accelerator=Accelerator(), args=types.SimpleNamespace(output_dir=str(tmp_path), save_total_limit=None),
        step_index=2, shuffle=torch.Generator(), rank=0, scheduler=state, episodes_done=32, world=2, layout="zero3",
        kl_ctl=state, moments=state, bad=types.SimpleNamespace(seen=0), log_history=[])
    monkeypatch.setattr(sharding, "is_sharded", lambda acc: True)
    publish = checkpoints.publish
    monkeypatch.setattr(checkpoints, "publish", lambda *a: (events.append("publish"), publish(*a)))
    final = ppo_trainer.PPOTrainer.save_checkpoint(fake)
    assert events.index("publish") > events.index("save_state") + 1
    assert events[events.index("save_state") + 1] == "wait", events
    assert os.path.isdir(os.path.join(final, ppo_trainer.SHARDED_STATE))


def test_step_figures_are_averaged_in_one_collective_on_the_device():
    """NCCL reduces only GPU tensors: a step's figures (the learning rate among them, a CPU tensor) go to the
    trainer's device before the all-reduce, all in one call (ppo.py under DDP on a GPU failed on the learning rate).
    The meta device stands in for the GPU: a figure left on the CPU would reach the fake reduce there."""
    from rlhfkit.ppo.trainer import mean_over_processes

    calls = []

    class Accelerator:
        def reduce(self, tensor, reduction):
            calls.append((tensor.device.type, tuple(tensor.shape), reduction))
            return torch.arange(tensor.numel(), dtype=torch.float32)  # what the other processes would give back

    figures = {"lr": torch.tensor(3e-4), "loss/policy": torch.tensor(0.5, dtype=torch.bfloat16), "count": 4}
    out = mean_over_processes(Accelerator(), figures, torch.device("meta"))
    assert calls == [("meta", (3,), "mean")]
    assert out == {"lr": 0.0, "loss/policy": 1.0, "count": 2.0}


def test_the_value_head_takes_the_policys_dtype_for_sharded_training(embedded_root):
    """ZeRO-3 (one flat buffer per parameter group) and FSDP2 (one per unit) refuse mixed dtypes: with a bf16
    policy trained in full, the float32 value head becomes bf16; with LoRA (float32 adapters) or a float32 policy
    nothing changes. Values still come out in float32."""
    from rlhfkit import models

    folder = str(embedded_root / "model")
    module = PolicyAndValue(models.load_causal_lm(folder, dtype=torch.bfloat16))
    assert module.value_head.weight.dtype == torch.float32
    assert "bfloat16" in module.match_value_head_dtype()
    assert module.value_head.weight.dtype == torch.bfloat16
    assert {p.dtype for p in module.parameters() if p.requires_grad} == {torch.bfloat16}
    _, values = module(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long), keep=2)
    assert values.dtype == torch.float32 and values.shape == (1, 2)
    assert module.match_value_head_dtype() is None  # already matching
    assert PolicyAndValue(models.load_causal_lm(folder)).match_value_head_dtype() is None  # float32 policy


class _FakeDeepSpeedAccelerator:
    """What :func:`rlhfkit.sharding.configure_deepspeed` reads of an accelerator launched under DeepSpeed."""

    def __init__(self, device: str, zero: dict):
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        self.distributed_type, self.num_processes = DistributedType.DEEPSPEED, 2
        self.device = torch.device(device)
        plugin = SimpleNamespace(zero_stage=3, deepspeed_config={"zero_optimization": zero})
        self.state = SimpleNamespace(deepspeed_plugin=plugin)


def test_zero3_on_cpu_releases_each_layer_after_use_unless_the_config_says_otherwise():
    """DeepSpeed's defaults (prefetch, and a reuse distance of 1e9 parameters) keep every layer fetched in forward
    whole until backward: on CPU a ZeRO-3 process held the full model through the update. On CPU both are set to
    0; a value the user's config names stays, and on GPUs DeepSpeed's (overlapping) defaults stay."""
    from rlhfkit import sharding

    cpu = _FakeDeepSpeedAccelerator("cpu", {"stage3_max_reuse_distance": "auto"})
    sharding.configure_deepspeed(cpu, 2, 1, 1.0, hidden_size=64)
    zero = cpu.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == 0 and zero["stage3_max_reuse_distance"] == 0
    assert zero["reduce_bucket_size"] == 64 * 64 and zero["stage3_param_persistence_threshold"] == 640
    assert cpu.state.deepspeed_plugin.deepspeed_config["train_batch_size"] == 4

    named = _FakeDeepSpeedAccelerator("cpu", {"stage3_prefetch_bucket_size": 1000, "stage3_max_reuse_distance": 7})
    sharding.configure_deepspeed(named, 2, 1, 1.0, hidden_size=64)
    zero = named.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == 1000 and zero["stage3_max_reuse_distance"] == 7

    gpu = _FakeDeepSpeedAccelerator("meta", {})  # any device but the CPU
    sharding.configure_deepspeed(gpu, 2, 1, 1.0, hidden_size=64)
    zero = gpu.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64) and "stage3_max_reuse_distance" not in zero


def test_zero3_gathers_the_trained_model_whole_but_not_a_frozen_one(monkeypatch):
    """Under ZeRO-3 the rollout gathers the policy once for generation; a frozen model (the reference, a reward
    model: DeepSpeed inference engines, which also carry an ``optimizer``) is left to its per-layer fetch, not held
    whole beside it (measured: the reference gathered too cost a second full copy of the model)."""
    from rlhfkit import sharding

    gathered = []

    @contextlib.contextmanager
    def record(engine):
        gathered.append(engine)
        yield

    monkeypatch.setattr(sharding, "describe", lambda acc: "deepspeed-zero3")
    monkeypatch.setattr(sharding, "_gathered_zero3", record)
    trained, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).requires_grad_(False)
    trained.optimizer = frozen.optimizer = object()
    with sharding.gathered(None, trained, frozen, None):
        pass
    assert gathered == [trained]


def test_ppo_adamw_is_fused_on_cpu_and_cuda():
    """The PPO optimizer is torch's fused AdamW where torch has the kernel (transformers' Trainer default):
    under ZeRO-3 the loop version's temporaries, two copies of each process's partition, were the update's peak."""
    from rlhfkit.ppo.trainer import fused_adamw

    assert fused_adamw(torch.device("cpu")) and fused_adamw("cuda") and not fused_adamw("hpu")
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.0, fused=fused_adamw(weight.device))
    weight.sum().backward()
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((4,), 0.9))
