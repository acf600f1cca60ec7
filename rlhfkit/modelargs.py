"""Model flags shared by the training scripts (the TRL names users know: ``use_peft``, ``lora_*``).

``--trust_remote_code`` comes from the trainers' own config (``TrainingArguments`` has it, off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
