"""The lean Llama decoding loop (``rlhfkit.lean_decode``, ``ppo.py --lean_decode``): the tokens transformers'
``generate`` gives, greedy and sampled with the same seed, the same logits to float rounding, stop tokens handled
the same way, and only for the models it applies to."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_path

from rlhfkit import lean_decode, sampling


def _llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128)
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def _prompts(rows: int = 6, width: int = 9, seed: int = 1):
    """Left-padded prompts of different lengths (every row but the first padded)."""
    generator = torch.Generator().manual_seed(seed)
    rows_ = [torch.randint(3, 60, (width - i % 4,), generator=generator).tolist() for i in range(rows)]
    return sampling.left_pad(rows_, 0)


def _both(model, config, seed: int = 5, trace: bool = False):
    """(transformers' tokens, lean tokens[, their traces]) for the same prompts and the same seed."""
    queries, mask = _prompts()
    out = []
    for lean in (False, True):
        calls: list = []
        torch.manual_seed(seed)
        with sampling.tracing(model, calls) if trace else torch.no_grad():
            out.append((sampling.generate(model, queries, mask, config, lean=lean), calls))
    return out


@pytest.mark.parametrize("stop", [[], [7, 11]])
def test_greedy_tokens_and_logits_match_generate(stop):
    model = _llama()
    config = sampling.generation_config(14, stop, 0, do_sample=False)
    assert lean_decode.why_not(model, config) is None
    (reference, ref_calls), (lean, lean_calls) = _both(model, config, trace=True)
    assert torch.equal(lean, reference)
    assert len(lean_calls) == len(ref_calls) == reference.shape[1]  # one LM-head call per generated token
    for (h_ref, l_ref), (h, logits) in zip(ref_calls, lean_calls, strict=True):
        torch.testing.assert_close(logits, l_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_sampled_tokens_match_generate_with_the_same_seed():
    """Temperature, top-k and top-p as generate applies them, the same random draws: the same tokens; the stop
    tokens end rows early (padded after) and generation ends once every row has stopped."""
    model = _llama(seed=3)
    for temperature, top_k, top_p in ((0.7, 0, 1.0), (1.3, 8, 0.9)):
        config = sampling.generation_config(20, [5, 9, 13], 0, temperature=temperature, top_k=top_k, top_p=top_p)
        (reference, _), (lean, _) = _both(model, config, seed=11)
        assert torch.equal(lean, reference), (temperature, top_k, top_p)
    config = sampling.generation_config(20, [5, 9, 13], 0, temperature=1.0)
    (reference, _), (lean, _) = _both(model, config)
    _, mask, stopped = sampling.truncate(lean, [5, 9, 13], 0)
    assert stopped.any() and (mask == 0).any()  # some rows stopped early: the padding after them is checked too
    assert torch.equal(lean, reference)
    different = sampling.generation_config(20, [5, 9, 13], 0, temperature=0.5)
    torch.manual_seed(5)
    assert not torch.equal(sampling.generate(model, *_prompts(), different, lean=True), reference)


def _lora(model, **overrides):
    from peft import LoraConfig, get_peft_model

    settings = dict(r=4, lora_alpha=8, target_modules="all-linear")
    settings.update(overrides)
    model = get_peft_model(model, LoraConfig(**settings)).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


@pytest.mark.parametrize("large", [False, True])
def test_adapters_unmerged_merged_or_disabled_decode_as_peft_computes_them(large, monkeypatch):
    """A LoRA policy decodes lean as PEFT computes it: unmerged (folded into a per-call weight, or, for large
    weights, the adapter's thin products added to the base product), merged, and disabled (the base alone, as
    the reference policy). ``large``: every weight on the large-weight path (through oneDNN on this CPU)."""
    if large:
        monkeypatch.setattr(lean_decode, "MIN_ONEDNN_ELEMENTS", 1)
    model = _lora(_llama(), lora_dropout=0.1)  # dropout does nothing in eval mode: no reason to refuse
    config = sampling.generation_config(10, [], 0, do_sample=False)
    assert lean_decode.why_not(model, config) is None
    (reference, ref_calls), (lean, lean_calls) = _both(model, config, trace=True)
    assert torch.equal(lean, reference)
    for (_, l_ref), (_, logits) in zip(ref_calls, lean_calls, strict=True):
        torch.testing.assert_close(logits, l_ref, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        assert lean_decode.why_not(model, config) is None
        (base, _), (lean_base, _) = _both(model, config)
        assert torch.equal(lean_base, base) and not torch.equal(base, reference)
    model.merge_adapter()
    assert lean_decode.why_not(model, config) is None
    (_, _), (lean_merged, _) = _both(model, config)
    assert torch.equal(lean_merged, reference)


def test_large_weights_are_read_in_place_and_small_ones_fused():
    """Small weights: one product with the query/key/value (gate/up) weights concatenated; large ones: each read
    where it lies (no copy of a large model's weights while it decodes), the LM head too."""
    model = _llama(hidden_size=32, intermediate_size=lean_decode.MIN_ONEDNN_ELEMENTS // 32 + 1)
    products = lean_decode._layer_products(model)[0]
    assert products["qkv"].weight is not None and not products["qkv"].pieces  # small: concatenated
    gate_up = products["gate_up"]
    assert gate_up.weight is None and len(gate_up.pieces) == 2
    mlp = model.model.layers[0].mlp
    assert gate_up.pieces[0][0] is mlp.gate_proj.weight and gate_up.pieces[1][0] is mlp.up_proj.weight
    assert (gate_up.pieces[0][1] is lean_decode._onednn_linear) == lean_decode._onednn(torch.device("cpu"))


def test_models_it_does_not_apply_to_say_why():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = sampling.generation_config(10, [], 0, do_sample=False)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    assert "not a LlamaForCausalLM" in lean_decode.why_not(gpt2, config)
    assert "biases" in lean_decode.why_not(_llama(attention_bias=True), config)
    assert "bfloat16" in lean_decode.why_not(_llama().to(torch.bfloat16), config)
    static = sampling.generation_config(10, [], 0, do_sample=False, static_cache=True)
    assert "cache" in lean_decode.why_not(_llama(), static)
    assert "DoRA" in lean_decode.why_not(_lora(_llama(), use_dora=True), config)
    dropout = _lora(_llama(), lora_dropout=0.1).train()  # dropout at work: PEFT's own forward only
    assert "plain LoRA" in lean_decode.why_not(dropout, config)


def test_real_llama_weights_decode_the_same():
    """stories260K (a real Llama checkpoint, 8 heads over 4 key/value heads): greedy decoding gives the same text."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fixture_path("models", "stories260K"))).eval()
    config = sampling.generation_config(24, [2], 0, do_sample=False)
    queries, mask = _prompts(rows=8, width=12)
    with torch.no_grad():
        reference = sampling.generate(model, queries, mask, config)
    assert torch.equal(sampling.generate(model, queries, mask, config, lean=True), reference)


def test_auto_keeps_generate_for_wide_models_without_onednn(monkeypatch):
    """``auto`` decodes lean at any width where the large products go through oneDNN (a CPU without autocast);
    without it only up to MAX_HIDDEN_SIZE, where the loop was measured faster; wider, generate."""
    config = sampling.generation_config(10, [], 0, do_sample=False)
    narrow = _llama(hidden_size=lean_decode.MAX_HIDDEN_SIZE, intermediate_size=16, num_hidden_layers=1)
    wide = _llama(hidden_size=2 * lean_decode.MAX_HIDDEN_SIZE, intermediate_size=16, num_hidden_layers=1)
    assert lean_decode.why_not(wide, config) is None  # it could: the loop decodes it the same
    assert "not a LlamaForCausalLM" in lean_decode.why_not_auto(_gpt2(), config)
    if lean_decode._onednn(torch.device("cpu")):
        assert lean_decode.why_not_auto(wide, config) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "without oneDNN" in lean_decode.why_not_auto(wide, config)
    monkeypatch.setattr(lean_decode, "_onednn", lambda device: False)
    assert lean_decode.why_not_auto(narrow, config) is None
    assert "hidden size" in lean_decode.why_not_auto(wide, config)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))


def test_generate_text_samples_the_same_texts_either_way(embedded_root, caplog):
    """run_generation.py's and compare_base_vs_ppo.py's sampling (``--lean_decode auto``, the default) on the
    embedded default model: the lean loop runs, and sampled texts equal ``--lean_decode off``'s with the same seed."""
    import logging

    from rlhfkit import models

    model = models.load_causal_lm(str(embedded_root / "model"))
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    prompts = ["What is 2 + 3?", "Name a colour.", "Count to three.", "Say hello."]
    texts = {}
    for mode in ("auto", "off"):
        torch.manual_seed(0)
        with caplog.at_level(logging.INFO, logger="rlhfkit.sampling"):
            caplog.clear()
            result = sampling.generate_text(model, tokenizer, prompts, max_new_tokens=16, batch_size=4,
                                            do_sample=True, temperature=0.9, lean_decode=mode)
        texts[mode] = result.completions
        assert ("lean Llama decoding loop" in caplog.text) == (mode == "auto")
    assert texts["auto"] == texts["off"]
    assert len({c[0] for c in texts["auto"]}) > 1


def test_under_bf16_autocast_the_same_tokens_and_logits():
    """ppo.py samples under autocast when the run computes in bf16 over float32 weights: the loop casts as
    transformers' step does (the norms in float32, the products in bf16), so the tokens and logits are the same."""
    model = _llama(hidden_size=64, intermediate_size=96)
    config = sampling.generation_config(16, [], 0, do_sample=False)
    queries, mask = _prompts()
    out = {}
    for lean in (False, True):
        calls: list = []
        with torch.autocast("cpu", dtype=torch.bfloat16), sampling.tracing(model, calls):
            out[lean] = (sampling.generate(model, queries, mask, config, lean=lean), calls)
    assert torch.equal(out[True][0], out[False][0])
    assert out[True][1][1][1].dtype == torch.bfloat16
    for (_, reference), (_, logits) in zip(out[False][1], out[True][1], strict=True):
        torch.testing.assert_close(logits.float(), reference.float(), atol=2e-2, rtol=2e-2)
