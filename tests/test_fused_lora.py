"""LoRA layers computed folded into the weight or as PEFT's products in one autograd function
(``rlhfkit.fused_lora``, ``ppo.py --fuse_lora``): the same outputs and the same gradients as PEFT's form, chosen by
the cost rule, less kept for the backward pass, and only where it applies."""

from __future__ import annotations

import pytest
import torch

from rlhfkit import fused_lora


def _lora_llama(hidden: int, intermediate: int, r: int = 16, dropout: float = 0.0, seed: int = 0, **lora):
    """A random one-layer Llama with LoRA on every linear layer, B not zero (so the adapter changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout,
                                                                target_modules="all-linear", **lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = logits.float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def _lora_layers(model):
    return [m for m in model.modules() if fused_lora.foldable(m)]


def test_folded_layers_give_peft_outputs_and_gradients():
    model = _lora_llama(32, 64)
    ids = torch.randint(0, 64, (3, 11))
    logits, grads = _loss_and_grads(model, ids)
    with fused_lora.fused(model, "on") as calls:
        folded_logits, folded_grads = _loss_and_grads(model, ids)
    assert calls == {"folded": 7, "products": 0, "peft": 0}  # q, k, v, o, gate, up, down
    torch.testing.assert_close(folded_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == folded_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(folded_grads[name], grads[name], rtol=1e-4, atol=1e-7, msg=name)
    # and the layers are PEFT's again afterwards
    assert _all_peft_s_again(model)
    again, _ = _loss_and_grads(model, ids)
    assert torch.equal(again, logits)


def test_a_wrong_fold_would_be_caught():
    """The comparison above can fail: folding without the LoRA scale changes the output."""
    model = _lora_llama(32, 64)
    ids = torch.randint(0, 64, (2, 7))
    logits, _ = _loss_and_grads(model, ids)
    for layer in _lora_layers(model):
        layer.scaling["default"] *= 0.5
    with fused_lora.fused(model, "on"):
        halved, _ = _loss_and_grads(model, ids)
    assert not torch.allclose(halved, logits, rtol=1e-3, atol=1e-4)


def test_the_cost_rule_folds_narrow_layers_and_keeps_wide_ones():
    # PEFT: 2nm + 3r(n+m) per token; folded: 3nm per token + 3rnm per call
    assert fused_lora.cost_ratio(64, 64, 16, 1232) == pytest.approx((3 * 4096 * 1232 + 3 * 16 * 4096)
                                                                    / ((2 * 4096 + 3 * 16 * 128) * 1232))
    assert fused_lora.cost_ratio(64, 64, 16, 1232) < fused_lora.MAX_COST_RATIO  # stories260K's layers
    assert fused_lora.cost_ratio(64, 172, 16, 1232) < fused_lora.MAX_COST_RATIO
    assert fused_lora.cost_ratio(768, 768, 16, 300) > fused_lora.MAX_COST_RATIO  # a 100M Llama's
    assert fused_lora.cost_ratio(768, 2560, 16, 300) > fused_lora.MAX_COST_RATIO
    assert fused_lora.cost_ratio(64, 64, 16, 1) > fused_lora.cost_ratio(64, 64, 16, 100)  # folding is per call

    ids = torch.randint(0, 64, (2, 16))
    narrow = _lora_llama(32, 64)
    with fused_lora.fused(narrow, "auto") as calls:
        _loss_and_grads(narrow, ids)
    assert calls == {"folded": 7, "products": 0, "peft": 0}
    wide = _lora_llama(256, 512, r=4)
    with fused_lora.fused(wide, "auto") as calls:
        _loss_and_grads(wide, ids)
    assert calls == {"folded": 0, "products": 7, "peft": 0}
    with fused_lora.fused(wide, "off") as calls:
        _loss_and_grads(wide, ids)
    assert calls == {"folded": 0, "products": 0, "peft": 0}
    assert _all_peft_s_again(wide)


def _all_peft_s_again(model) -> bool:
    """PEFT's own class forward, no instance forward, no fused setting left on any layer."""
    from peft.tuners.lora.layer import Linear

    layers = _lora_layers(model)
    return bool(layers) and Linear.forward is fused_lora._peft_forward and all(
        "forward" not in vars(m) and fused_lora.STATE_ATTRIBUTE not in vars(m) for m in layers)


def test_contexts_nest_and_leave_other_models_to_peft():
    """Two models, one inside fused(): the other's layers compute as PEFT does (the class is patched for both);
    an inner context over the same model applies its own mode and the outer one's comes back after it."""
    ids = torch.randint(0, 64, (2, 16))
    inside, outside = _lora_llama(32, 64), _lora_llama(32, 64, seed=1)
    reference, _ = _loss_and_grads(outside, ids)
    with fused_lora.fused(inside, "auto") as outer:
        other, _ = _loss_and_grads(outside, ids)
        with fused_lora.fused(inside, "off") as inner:
            _loss_and_grads(inside, ids)
        _loss_and_grads(inside, ids)
    assert torch.equal(other, reference)
    assert outer == {"folded": 7, "products": 0, "peft": 0}  # not the outside model's 7 calls nor the inner ones
    assert inner == {"folded": 0, "products": 0, "peft": 0}
    with fused_lora.fused(inside, "auto") as outer:
        with fused_lora.fused(inside, "on") as inner:
            _loss_and_grads(inside, ids)
        _loss_and_grads(inside, ids)
    assert outer == inner == {"folded": 7, "products": 0, "peft": 0}
    assert _all_peft_s_again(inside) and _all_peft_s_again(outside)


def test_only_plain_lora_at_work_is_folded():
    assert not _lora_layers(_lora_llama(32, 64, dropout=0.1))  # dropout at work: products (below), never folded
    assert not _lora_layers(_lora_llama(32, 64, use_dora=True))
    model = _lora_llama(32, 64)
    assert len(_lora_layers(model)) == 7
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).logits
    with torch.no_grad(), fused_lora.fused(model, "on") as calls, model.disable_adapter():
        disabled = model(input_ids=ids).logits
    assert torch.equal(disabled, base) and calls == {"folded": 0, "products": 0, "peft": 0}  # the reference: PEFT's own


def test_lora_dropout_at_work_takes_the_products_form_with_peft_s_masks():
    """LoRA dropout in training (TRL's default 0.05; grpo.py and rloo.py keep it on): never folded (the base product
    sees the undropped input), computed as products with the mask drawn as torch's CPU dropout draws it, so from
    the same seed the same masks as PEFT's forward: the same logits and gradients, and x A^T not kept. In eval
    mode the dropout does nothing and the layers may fold again."""
    model = _lora_llama(32, 64, dropout=0.2)
    model.train()
    ids = torch.randint(0, 64, (3, 40))
    torch.manual_seed(7)
    logits, grads = _loss_and_grads(model, ids)
    torch.manual_seed(7)
    peft_kept = _kept_for_backward(model, ids)
    with fused_lora.fused(model, "on") as calls:  # "on" would fold every layer it could: none with dropout
        torch.manual_seed(7)
        products_logits, products_grads = _loss_and_grads(model, ids)
        torch.manual_seed(7)
        products_kept = _kept_for_backward(model, ids)
    assert calls == {"folded": 0, "products": 14, "peft": 0}
    torch.testing.assert_close(products_logits, logits, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(products_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert peft_kept - products_kept >= 7 * ids.numel() * 4 * 16, (peft_kept, products_kept)  # x A^T, r=16
    with fused_lora.fused(model, "auto") as calls:  # a different draw: the dropout is really at work
        torch.manual_seed(8)
        other, _ = _loss_and_grads(model, ids)
    assert calls["products"] == 7 and not torch.allclose(other, logits, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad(), fused_lora.fused(model, "on") as calls:
        model(input_ids=ids)
    assert calls == {"folded": 7, "products": 0, "peft": 0}


def _kept_for_backward(model, ids) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.sum()
    return sum(kept.values())


@pytest.mark.parametrize("bias", ["none", "all"])
def test_the_products_form_gives_peft_outputs_and_gradients_and_keeps_less(bias):
    """Wide layers (the cost rule keeps them unfolded) as one autograd function: PEFT's result and gradients (the
    base layers' biases trainable with ``bias="all"`` too), less kept for the backward pass. (What a run gains is
    mostly the three (tokens x outputs) temporaries per layer the in-place add saves: bench/results.)"""
    model = _lora_llama(128, 256, r=4, bias=bias)
    if bias == "all":
        for layer in _lora_layers(model):
            layer.base_layer.bias = torch.nn.Parameter(torch.randn(layer.base_layer.out_features) * 0.1)
    ids = torch.randint(0, 64, (3, 40))
    logits, grads = _loss_and_grads(model, ids)
    peft_kept = _kept_for_backward(model, ids)
    with fused_lora.fused(model, "auto") as calls:
        products_logits, products_grads = _loss_and_grads(model, ids)
        products_kept = _kept_for_backward(model, ids)
    assert calls["products"] == 14 and calls["folded"] == calls["peft"] == 0  # 7 layers, twice
    torch.testing.assert_close(products_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == products_grads.keys()
    assert any("lora_A" in n for n in grads) and (bias == "none" or any("base_layer.bias" in n for n in grads))
    for name in grads:
        torch.testing.assert_close(products_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # PEFT keeps x A^T (tokens x rank, float32) of every layer as well; the products form recomputes it
    assert peft_kept - products_kept == 7 * ids.numel() * 4 * 4, (peft_kept, products_kept)


def test_a_wrong_products_backward_would_be_caught():
    """The gradient comparison above can fail: a products form that forgets the scale in A's gradient differs."""
    model = _lora_llama(128, 256, r=4)
    ids = torch.randint(0, 64, (2, 20))
    _, grads = _loss_and_grads(model, ids)
    original = fused_lora.LoRAProducts.backward

    def unscaled(ctx, grad_out):
        grad_x, none, grad_bias, grad_a, *rest = original(ctx, grad_out)
        return grad_x, none, grad_bias, grad_a / ctx.scale, *rest

    fused_lora.LoRAProducts.backward = staticmethod(unscaled)
    try:
        with fused_lora.fused(model, "auto"):
            _, wrong = _loss_and_grads(model, ids)
    finally:
        fused_lora.LoRAProducts.backward = staticmethod(original)
    name = next(n for n in grads if "lora_A" in n)
    assert not torch.allclose(wrong[name], grads[name], rtol=1e-3, atol=1e-6)


def test_the_products_form_under_autocast_computes_what_autocast_makes_of_peft_s_form():
    """Under bfloat16 autocast (a float32 model, as the Trainer scripts run it) autocast runs PEFT's three linear
    layers in bfloat16; the products form casts the same operands once and adds in place: the same logits and
    gradients up to bfloat16 rounding, float32 gradients for the float32 adapters, and less kept (at least x A^T
    per layer; a layer whose input needs no gradient keeps no copy of its weight, as autograd does for PEFT's)."""
    model = _lora_llama(128, 256, r=4)
    ids = torch.randint(0, 64, (3, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, grads = _loss_and_grads(model, ids)
        peft_kept = _kept_for_backward(model, ids)
    with fused_lora.fused(model, "auto") as calls, torch.autocast("cpu", dtype=torch.bfloat16):
        products_logits, products_grads = _loss_and_grads(model, ids)
        products_kept = _kept_for_backward(model, ids)
    assert calls == {"folded": 0, "products": 14, "peft": 0}
    assert products_logits.dtype == logits.dtype == torch.bfloat16
    assert (products_logits.float() - logits.float()).abs().max() <= 2e-2 * logits.float().abs().max()
    assert grads.keys() == products_grads.keys()
    for name in grads:
        assert products_grads[name].dtype == grads[name].dtype == torch.float32, name
        error = (products_grads[name] - grads[name]).abs().max()
        assert error <= 3e-2 * grads[name].abs().max(), (name, error)
    assert peft_kept - products_kept >= 7 * ids.numel() * 4 * 2, (peft_kept, products_kept)  # x A^T, bfloat16


def test_the_products_form_leaves_trainable_weights_to_peft():
    model = _lora_llama(128, 256, r=4)
    ids = torch.randint(0, 64, (2, 12))
    for layer in _lora_layers(model):
        layer.base_layer.weight.requires_grad_(True)
    with fused_lora.fused(model, "auto") as calls:
        _loss_and_grads(model, ids)
    assert calls == {"folded": 0, "products": 0, "peft": 7}


def test_float32_adapters_over_a_bfloat16_model_take_the_products_form_without_peft_s_float32_copies():
    """PEFT keeps its adapters in float32 over a bfloat16 model and casts each LoRA layer's input to float32, a copy
    autograd keeps for the backward pass; the products form computes the adapter in float32 the same way (the same
    logits: the sum is rounded once, as PEFT rounds it) but keeps the bfloat16 input and casts it again there."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config).to(torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    layers = [m for m in model.modules() if fused_lora.plain(m)]
    assert len(layers) == 7 and not _lora_layers(model)  # plain, but not foldable: the dtypes differ
    assert {layer.lora_A["default"].weight.dtype for layer in layers} == {torch.float32}
    ids = torch.randint(0, 64, (3, 40))
    logits, grads = _loss_and_grads(model, ids)
    peft_kept = _kept_for_backward(model, ids)
    for mode in ("auto", "on"):  # "on" folds what it can: nothing here
        with fused_lora.fused(model, mode) as calls:
            products_logits, products_grads = _loss_and_grads(model, ids)
            products_kept = _kept_for_backward(model, ids)
        assert calls == {"folded": 0, "products": 14, "peft": 0}
        assert torch.equal(products_logits, logits)
        for name in grads:  # float32 gradients through bfloat16 activations: rounded at other places than PEFT's
            assert products_grads[name].dtype == grads[name].dtype
            error = (products_grads[name] - grads[name]).abs().max()
            assert error <= 2e-2 * grads[name].abs().max(), name
        # at least the float32 copies of the inputs of q, k, v, o, gate and up (tokens x 128 x 4 bytes each)
        assert peft_kept - products_kept >= 6 * ids.numel() * 128 * 4, (peft_kept, products_kept)


def _fake_trainer(model, distributed="NO", train=None):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    accelerator = SimpleNamespace(distributed_type=getattr(DistributedType, distributed), num_processes=1,
                                  is_fsdp2=True)
    return SimpleNamespace(model=model, accelerator=accelerator, train=train)


def test_trainer_scripts_compute_lora_layers_fused_for_the_whole_of_train_and_say_when_none_qualifies():
    """rlhfkit.training.fuse_lora_in_training, as make_trainer installs it: the layers are fused while
    trainer.train runs (and PEFT's again after), the calls land in the record; a model whose LoRA layers all have
    DoRA is left to PEFT's forward and the record says why; sharded parameters turn auto off."""
    from rlhfkit import training

    model = _lora_llama(128, 256, r=4)
    ids = torch.randint(0, 64, (2, 12))
    inside = {}

    def train():
        inside["fused"] = all(fused_lora.STATE_ATTRIBUTE in vars(m) for m in _lora_layers(model))
        _loss_and_grads(model, ids)
        return "trained"

    trainer = _fake_trainer(model, train=train)
    record = training.TrainingRecord()
    training.fuse_lora_in_training(trainer, "auto", record)
    assert record.lora_calls is None  # nothing ran yet
    assert trainer.train() == "trained" and inside["fused"] and _all_peft_s_again(model)
    assert record.results()["fuse_lora"] == "auto"
    assert record.results()["lora_train_calls"] == {"folded": 0, "products": 7, "peft": 0}

    dora = _lora_llama(128, 256, r=4, use_dora=True)
    trainer, record = _fake_trainer(dora, train=lambda: "trained"), training.TrainingRecord()
    training.fuse_lora_in_training(trainer, "auto", record)
    assert record.results()["fuse_lora"].startswith("off: no plain LoRA layer") and record.lora_calls is None

    trainer, record = _fake_trainer(model, "FSDP", train=lambda: "trained"), training.TrainingRecord()
    training.fuse_lora_in_training(trainer, "auto", record)
    assert record.fuse_lora == "off" and trainer.train() == "trained" and record.lora_calls is None
