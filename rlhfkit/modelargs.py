"""Model flags shared by the training scripts (the TRL names users know: ``use_peft``, ``lora_*``).

``--trust_remote_code`` comes from the trainers' own config (``TrainingArguments`` has it, off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The RL scripts' default learning rates (ppo.py, grpo.py, rloo.py), when --learning_rate is not given: LoRA adapters
# need a larger step than the full model to move the policy as far per episode. Measured for ppo.py on stories260K
# with a reward model trained on a rule, and for grpo.py on the toy task (docs/scripts.md); TRL's GRPO default,
# 1e-6, is a full fine-tuning rate for billion-parameter models and barely moves a LoRA adapter.
LORA_LEARNING_RATE = 3e-4
FULL_LEARNING_RATE = 3e-5


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder (model or adapter). Default: the embedded tiny Llama (offline)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; default: the model's own."}
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code when loaded."}
    )
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (False: full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt, e.g. q_proj k_proj v_proj o_proj; default: all linear layers."},
    )
    # auto in every training script: with LoRA it measured 0.82-0.89x the peak RSS of PEFT's forward in sft.py,
    # reward_modeling.py and dpo.py at the same speed and loss, 0.93x in ppo.py on 100M (docs/benchmarks.md)
    fuse_lora: str = field(
        default="auto",
        metadata={"help": "How the LoRA layers compute while training (the same result as PEFT's form up to float "
                  "rounding; the base weight frozen): 'auto': folded, one matrix product x (W + s B A)^T, where "
                  "that costs at most 1.2x PEFT's multiply-adds (a rank wide for its layer: every layer of a "
                  "260K-parameter model at r=16), elsewhere PEFT's three products in one autograd function that "
                  "adds the adapter in place and keeps only the layer's input for the backward pass (fewer "
                  "element-wise passes and less memory; under autocast, on autocast's copies); 'on': every plain "
                  "LoRA linear layer folded where the adapter shares the weight's dtype; 'off': PEFT's own "
                  "forward. Plain LoRA only (one adapter, no DoRA); LoRA dropout at work is drawn as torch draws it, "
                  "never folded (under autocast it leaves the layer to PEFT's forward); off with sharded parameters "
                  "(FSDP, DeepSpeed).", "choices": ("auto", "on", "off")},
    )

    def lora_config(self, task_type: str):
        """The ``peft.LoraConfig`` these flags describe, or None without ``--use_peft``."""
        if not self.use_peft:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules or "all-linear",
            task_type=task_type,
        )
