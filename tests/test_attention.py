"""Padding-free SFT (rlhfkit/attention.py): attention per packed row gives the padded batch's numbers, forward and
backward, also with grouped-query attention; the choice of padding-free batches; and TRL's collator made padding-free
by a real SFTTrainer."""

from __future__ import annotations

import argparse

import pytest
import torch

from rlhfkit import attention
from rlhfkit.device import DeviceInfo


def _llama(kv_heads: int, implementation: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    attention.register()
    model.set_attn_implementation(implementation)
    return model


def _batch(lengths):
    rows = [torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    width = max(lengths)
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    edges = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed = {"input_ids": torch.cat(rows)[None], "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
              "cu_seq_lens_q": edges, "cu_seq_lens_k": edges, "max_length_q": width, "max_length_k": width}
    return {"input_ids": ids, "attention_mask": mask}, packed


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_per_row_gives_the_padded_batch_numbers(kv_heads):
    lengths = [7, 19, 3, 12]
    padded, packed = _batch(lengths)
    model = _llama(kv_heads, attention.VARLEN)
    reference = _llama(kv_heads, "sdpa")
    logits = reference(**padded, use_cache=False).logits
    expected = torch.cat([logits[i, :n] for i, n in enumerate(lengths)])
    got = model(**packed, use_cache=False).logits[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the gradients too: a loss over the real tokens only
    got.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_without_row_boundaries_it_is_plain_sdpa():
    """Generation and padded batches (no cu_seq_lens in the call) go through transformers' SDPA unchanged."""
    padded, _ = _batch([5, 9])
    model, reference = _llama(4, attention.VARLEN), _llama(4, "sdpa")
    real = padded["attention_mask"].bool()  # padding positions are never read
    torch.testing.assert_close(model(**padded).logits[real], reference(**padded).logits[real])


def _args(**values):
    base = dict(padding_free=None, pad_to_multiple_of=None, packing=False)
    return argparse.Namespace(**{**base, **values})


def test_padding_free_is_the_default_except_where_shapes_must_stay_fixed():
    cpu, hpu = DeviceInfo("cpu"), DeviceInfo("hpu", lazy_mode=True)
    assert attention.choose_padding_free(_args(), cpu) is True
    assert attention.choose_padding_free(_args(pad_to_multiple_of=64), cpu) is False
    assert attention.choose_padding_free(_args(), hpu) is False
    # CUDA: per-row attention was slower than padded SDPA on an H200 (516 vs 330 ms forward+backward)
    assert attention.choose_padding_free(_args(), DeviceInfo("cuda")) is False
    assert attention.choose_padding_free(_args(padding_free=True), DeviceInfo("cuda")) is True
    assert attention.choose_padding_free(_args(packing=True), cpu) is False
    assert attention.choose_padding_free(_args(padding_free=False), cpu) is False
    assert attention.choose_padding_free(_args(padding_free=True, pad_to_multiple_of=64), cpu) is True  # as asked


def test_enable_makes_trls_collator_padding_free(tmp_path):
    from conftest import FIXTURES
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not (FIXTURES / "tokenizers" / "gpt2").exists():
        pytest.skip("the GPT-2 tokenizer fixture is absent (../shared/fixtures)")
    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURES / "tokenizers" / "gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    data = Dataset.from_dict({"prompt": ["Hi", "Hello there"], "completion": [" a", " b c d"]})
    trainer = SFTTrainer(model=model, args=SFTConfig(str(tmp_path), max_length=32, use_cpu=True, report_to="none",
                                                      bf16=False), train_dataset=data, processing_class=tokenizer)
    assert attention.enable(trainer, model, True) == f"padding-free ({attention.VARLEN})"
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert batch["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in batch and "attention_mask" not in batch
    assert model.config._attn_implementation == attention.VARLEN
