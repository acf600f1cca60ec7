"""How the processes of a run share the model (accelerate's DDP, FSDP2, DeepSpeed ZeRO), and what our own PPO
engine needs beyond ``accelerator.prepare`` to run sharded:

* :func:`describe`: the layout in one word, for the logs and ``all_results.json``;
* :func:`configure_deepspeed`: the batch, accumulation and clipping DeepSpeed's config must state when no
  dataloader is prepared (TRL's trainers get them from their dataloader; our PPO loop has none);
* :func:`prepare_frozen`: a frozen model (the reference, the reward model) sharded for inference as the policy is
  for training (OpenRLHF's arrangement), not replicated on every process;
* :func:`gathered_for_generation`: the policy's parameters gathered once for ``generate`` (TRL's
  ``unwrap_model_for_generation``), instead of one all-gather per layer per new token.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def describe(accelerator) -> str:
    """``single``, ``ddp``, ``fsdp2`` (``fsdp1``), ``deepspeed-zero<stage>``, ... : how the model is shared."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return "fsdp2" if accelerator.is_fsdp2 else "fsdp1"
    if accelerator.num_processes == 1:
        return "single"
    return {DistributedType.MULTI_GPU: "ddp", DistributedType.MULTI_CPU: "ddp",
            DistributedType.MULTI_HPU: "ddp"}.get(kind, str(kind).lower())


def is_sharded(accelerator) -> bool:
    """Whether parameters, gradients or optimizer states live in shards (FSDP, DeepSpeed ZeRO)."""
    return describe(accelerator).startswith(("fsdp", "deepspeed"))
