"""Padding-free SFT on every device: the batch's rows in one packed row, attention computed per row.

TRL's SFT collator with ``padding_free`` concatenates a batch's rows into one row: ``position_ids`` restart at each
row and the rows' boundaries come with the batch (``cu_seq_lens_q`` / ``cu_seq_lens_k``). No padding token is
computed, so a batch of rows of uneven length costs what its real tokens cost. Flash-attention kernels read those
boundaries on CUDA; elsewhere (CPU, Gaudi, a GPU without flash-attn) transformers' SDPA path builds a block-diagonal
mask over the whole packed row instead, which is exact but quadratic in the packed row's length: measured on CPU
(8 rows of 68-472 tokens, a 43M Llama), 0.94x the padded batch's tokens/s in bf16. :func:`varlen_sdpa` runs SDPA once
per row instead, causal and without a mask: the same numbers (to 4e-7 in fp32), attention in sum(n_i^2), and 1.41x
(bf16) to 1.84x (fp32) the padded batch's tokens/s in the same measurement.

TRL 1.16 refuses ``padding_free`` with ``max_length`` unless it packs ("max_length is not enforced"), although it
truncates every row to ``max_length`` while preparing the dataset, before any collator sees it; :func:`enable`
therefore turns the collator padding-free after the trainer is built.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

VARLEN = "sdpa_varlen"  # the attention implementation registered by :func:`register`
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "paged_attention")


def varlen_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: SDPA per packed row when the batch carries ``cu_seq_lens_q`` (one packed
    row, TRL's padding-free collator), else transformers' own SDPA (padded batches, generation).

    query: (1, heads, T, d); key, value: (1, kv_heads, T, d); returns (1, T, heads, d)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    edges = bounds.tolist()
    lengths = [end - start for start, end in zip(edges[:-1], edges[1:], strict=True)]
    # torch.split, not a slice per row: a slice's backward fills a zero tensor as long as the packed row and adds
    # its part in (rows x packed-row work per tensor and layer); split's backward is one concatenation
    parts = zip(*(torch.split(t, lengths, dim=2) for t in (query, key, value)), strict=True)
    rows = [F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                           dropout_p=dropout if module.training else 0.0)
            for (q, k, v), n in zip(parts, lengths, strict=True) if n > 0]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`VARLEN` an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_sdpa)


def choose_padding_free(training_args, info) -> bool:
    """``--padding_free`` as the run will use it: as given, or when left unset (None), on unless the batches are
    padded to fixed widths (``--pad_max``, ``--num_buckets``, ``--pad_to_multiple_of``: static shapes), the run is
    on Gaudi (which compiles a graph per shape, and a packed row's length varies every step) or on CUDA (where the
    per-row attention was measured slower than padded SDPA) or TRL packs (``--packing``: its ``bfd`` packing is
    padding-free already)."""
    if training_args.padding_free is not None:
        return bool(training_args.padding_free)
    if training_args.packing:
        return False  # TRL's bfd packing makes its collator padding-free itself; enable() sees it there
    reason = ("static shapes (padding to a multiple)" if training_args.pad_to_multiple_of else
              "Gaudi (a packed row's length varies every step)" if info.type == "hpu" else
              # per-row attention launches kernels per row and layer; measured on an H200 (the suite's 350m Llama,
              # 64 rows, 17.6k tokens, bf16 autocast): forward+backward 516 ms per-row against 330 ms padded
              "CUDA (attention per row measured slower than padded SDPA on an H200; --padding_free True to "
              "choose it)" if info.type == "cuda" else None)
    if reason:
        logger.info("padding-free batches off: %s", reason)
        return False
    return True


def enable(trainer, model, padding_free: bool) -> str | None:
    """After the trainer is built: the collator made padding-free when ``padding_free`` (see the module docstring),
    and the model's attention made :data:`VARLEN` wherever the batches are padding-free (also TRL's ``bfd``
    packing), unless it is a flash-attention kernel that reads the row boundaries itself. Returns a description
    for the results (None: padded batches)."""
    collator = trainer.data_collator
    if padding_free and hasattr(collator, "padding_free"):
        collator.padding_free = True
    if not getattr(collator, "padding_free", False):
        return None
    current = model.config._attn_implementation
    if current in NATIVE_VARLEN:
        logger.info("padding-free batches: %s reads the rows' boundaries itself", current)
        return f"padding-free ({current})"
    register()
    model.set_attn_implementation(VARLEN)
    logger.info("padding-free batches: each batch's rows packed into one row, attention per row (%s instead of %s)",
                VARLEN, current)
    return f"padding-free ({VARLEN})"
