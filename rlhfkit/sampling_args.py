"""The sampling flags, declared once: how prompts are formatted and how answers are drawn.

``ppo.py`` takes :class:`SamplingArguments` (its response length is optimum-habana's ``--output_max_length``, and it
samples always); ``compare_base_vs_ppo.py`` takes :class:`SamplingSettings` (each model sampled alike, at PPO's
temperature, so the KL from the base is measured on the distribution PPO trained); ``run_generation.py`` takes
:class:`DecodingArguments` with its own defaults (:func:`default`): greedy, and temperature 1.0 under
``--do_sample``, as ``transformers``' ``generate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from rlhfkit.errors import UserError

PROMPT_FORMATS = ("auto", "chat", "qa", "raw")


@dataclass
class SamplingArguments:
    prompt_format: str = field(
        default="auto",
        metadata={"help": "auto: the chat template if the tokenizer has one, else qa; chat: the chat template; "
                  "qa: optimum-habana's 'Question: ...\\n\\nAnswer:'; raw: the prompt text as it is (base models).",
                  "choices": PROMPT_FORMATS},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k likeliest tokens; 0: no limit."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass; 1.0: no limit."})
    lean_decode: str = field(
        default="auto",
        metadata={"help": "On CPU, decode each token with a lean Llama step (fused query/key/value and gate/up "
                  "products for small weights, large weights read in place through oneDNN, a KV cache written in "
                  "place, one-operation norms: the same logits to float rounding and generate's token selection, "
                  "so the same tokens) instead of transformers' generate: 1.46x generated tokens/s on a "
                  "260K-parameter model, 1.16x at hidden size 512, 1.44x on a 100M Llama, 1.79x at 2,048. "
                  "'auto': on CPU, for a Llama with float32 weights and no biases (a LoRA adapter merged or not); "
                  "above hidden size 512 only without autocast; else generate. 'off': always generate.",
                  "choices": ("auto", "off")},
    )

    def check_sampling(self, sampling: bool = True, fix: str = "") -> None:
        """Refuse values that cannot sample; ``fix`` names the way out when ``sampling`` is optional."""
        if sampling and self.temperature <= 0:
            raise UserError(f"--temperature must be positive when sampling{fix}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UserError("--top_p must be in (0, 1] and --top_k at least 0")


@dataclass
class DecodingArguments(SamplingArguments):
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate at most per answer."})
    do_sample: bool = field(default=True, metadata={"help": "Sample (False: greedy decoding)."})


@dataclass
class SamplingSettings(DecodingArguments):
    """How compare_base_vs_ppo.py samples every model."""

    generations_per_prompt: int = field(default=1, metadata={"help": "Answers per prompt and model."})
    batch_size: int = field(default=16, metadata={"help": "Answers generated per batch."})
    seed: int = field(default=42, metadata={"help": "Random seed (each model starts sampling from it)."})


def default(name: str, value, help: str | None = None):  # noqa: A002 (the metadata key's name)
    """The field ``name`` of the sampling flags with a script's own default (and a help text saying what the
    script does with it); the choices kept."""
    declared = {f.name: f for f in fields(SamplingSettings)}[name]
    return field(default=value, metadata={**declared.metadata, **({"help": help} if help else {})})
