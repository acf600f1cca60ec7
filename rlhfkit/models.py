"""Loading models and tokenizers: hub ids or local folders, full models or PEFT adapters, with clear errors.

* ``None`` as a model name means the embedded default (:mod:`rlhfkit.embedded`).
* A local folder must hold a model (``config.json``) or an adapter (``adapter_config.json``); an adapter is
  loaded onto the base model it records.
* ``trust_remote_code`` is off unless the caller passes it; weights are read from safetensors, and pickle
  ``.bin`` weights only load with ``allow_pickle=True`` (a warning names the risk).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def resolve_name(name: str | None) -> str:
    """The model to load: ``name`` itself, or the embedded default's model folder when ``name`` is None."""
    if name:
        return name
    from rlhfkit import embedded

    path = embedded.model_dir(embedded.ensure())
    logger.info("no model given: using the embedded default tiny Llama at %s", path)
    return path


def _looks_local(name: str) -> bool:
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def is_adapter(name: str) -> bool:
    return os.path.isfile(os.path.join(name, ADAPTER_CONFIG))


def check_model_source(name: str, what: str = "model") -> None:
    """Refuse, with a one-line error, a local path that is missing or holds no model or adapter."""
    if not _looks_local(name):
        return
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise UserError(f"{what} path {name} does not exist: check the path, or pass a hub id")
    if not os.path.isdir(path):
        raise UserError(f"{what} path {name} is a file: pass the folder written by save_pretrained")
    markers = ["config.json"] + (["tokenizer_config.json", "tokenizer.json"] if what == "tokenizer" else [])
    if not (any(os.path.isfile(os.path.join(path, m)) for m in markers) or is_adapter(path)):
        raise UserError(
            f"{name} is not a model folder (no config.json or {ADAPTER_CONFIG}): "
            "pass a folder written by save_pretrained, or a hub id"
        )


def adapter_base(name: str) -> str:
    """The base model an adapter folder records (``base_model_name_or_path``)."""
    with open(os.path.join(name, ADAPTER_CONFIG), encoding="utf-8") as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise UserError(f"adapter {name} does not record its base model: pass the base with --base_model_name")
    return base


def _hub_error(name: str, err: Exception, what: str) -> UserError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if _looks_local(name):
        return UserError(f"could not load {what} from {name}: {first}")
    return UserError(
        f"could not load {what} '{name}' from the hub ({first}), and no local folder has that name: "
        "pass a local folder, or check network access and HF_TOKEN"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False, padding_side: str | None = None):
    """A tokenizer from a hub id or folder (an adapter folder falls back to its base's tokenizer)."""
    from transformers import AutoTokenizer

    check_model_source(name, "tokenizer")
    source = name
    if _looks_local(name) and is_adapter(name) and not os.path.isfile(os.path.join(name, "tokenizer_config.json")):
        source = adapter_base(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _hub_error(source, err, "tokenizer") from None
    if padding_side:
        tokenizer.padding_side = padding_side
    return tokenizer


def _check_weights_format(name: str, allow_pickle: bool) -> None:
    if not _looks_local(name) or not os.path.isdir(name):
        return
    files = os.listdir(name)
    if any(f.endswith(".safetensors") for f in files):
        return
    if any(f.endswith((".bin", ".pt", ".pth")) for f in files):
        if not allow_pickle:
            raise UserError(
                f"{name} holds pickle weights (.bin), which can run code when loaded: "
                "convert them to safetensors, or pass --allow_pickle if you trust the source"
            )
        logger.warning("loading pickle weights from %s (--allow_pickle): only do this for sources you trust", name)


def _base_of(name: str, base: str | None) -> str:
    """The model to load under ``name``: ``base`` when given (an adapter merged into another base), else the
    base an adapter folder records, else ``name`` itself; checked."""
    given = base is not None
    if not given:
        base = adapter_base(name) if _looks_local(name) and is_adapter(name) else name
    if base != name:
        check_model_source(base, "base model" if given else "adapter's base model")
    return base


def _attach_adapter(model, name: str, base: str):
    """``model`` (loaded from ``base``) with the adapter folder ``name`` on it, as a ``PeftModel``; an adapter
    whose shapes do not fit is refused in one line."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, name)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise UserError(f"adapter {name} does not fit base {base} ({detail}): merge it into the base model it was "
                        "trained on") from None


def load_causal_lm(
    name: str,
    dtype=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    merge_adapter: bool = False,
    base: str | None = None,
):
    """A causal LM from a hub id or a folder; an adapter folder loads its base plus the adapter (``base``: another
    base to put it on, as merge_peft_adapter.py's --base_model_name).

    With ``merge_adapter`` the adapter is folded into the weights (plain model back); otherwise an adapter
    comes back as a ``PeftModel``.
    """
    from transformers import AutoModelForCausalLM

    check_model_source(name)
    whose = "its" if base is None else "the"
    base = _base_of(name, base)
    _check_weights_format(base, allow_pickle)
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": None if allow_pickle else True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(base, err, "model") from None
    if base != name:
        logger.info("loading adapter %s onto %s base %s", name, whose, base)
        model = _attach_adapter(model, name, base)
        if merge_adapter:
            model = model.merge_and_unload()
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters of ``model`` (``ds_numel``: the full size of one that DeepSpeed ZeRO-3 holds partitioned)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable_only)


def load_sequence_classifier(
    name: str,
    dtype=None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    pad_token_id: int | None = None,
    trained_head: bool = False,
    base: str | None = None,
    merge_adapter: bool = True,
):
    """A scalar-score model (``AutoModelForSequenceClassification``, ``num_labels=1``) for reward modeling.

    A causal-LM checkpoint gets a new, randomly initialised score head (the usual start of reward
    training); a reward-model adapter folder loads onto its base with its trained head. ``pad_token_id`` is
    written into the config: the score is read at the last non-pad token. ``trained_head=True`` (a reward
    model used for scoring) refuses a checkpoint that is not a sequence classifier, whose head would be random.
    ``base`` and ``merge_adapter`` as in :func:`load_causal_lm` (here an adapter is merged by default).
    """
    from transformers import AutoModelForSequenceClassification

    check_model_source(name, "reward model")
    base = _base_of(name, base)
    if trained_head:
        check_reward_model(name, trust_remote_code)
    _check_weights_format(base, allow_pickle)
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": None if allow_pickle else True,
              "num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        # an adapter's base has no score head; the adapter holds the trained one, restored just below: transformers'
        # "score.weight MISSING, newly initialized" report for the base would be false, so it is not shown
        with _transformers_quiet() if base != name else contextlib.nullcontext():
            model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(base, err, "reward model") from None
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if base != name:
        model = _attach_adapter(model, name, base)
        if merge_adapter:
            model = model.merge_and_unload()
        logger.info("reward model %s: adapter and its trained score head loaded onto %s", name, base)
    return model


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' own log lines at error level only, for the duration."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def check_reward_model(name: str, trust_remote_code: bool = False) -> None:
    """Refuse, before loading weights, a reward model that is not a sequence classifier (a causal LM would get a
    random score head: scores that mean nothing, the silent version of upstream's ``score`` crash)."""
    check_model_source(name, "reward model")
    base = adapter_base(name) if _looks_local(name) and is_adapter(name) else name
    if base != name:
        with open(os.path.join(name, ADAPTER_CONFIG), encoding="utf-8") as handle:
            task = json.load(handle).get("task_type")
        if task != "SEQ_CLS":
            raise UserError(f"{name} is a {task or 'untyped'} adapter, not a reward model (SEQ_CLS): train one with "
                            "reward_modeling.py")
        return
    from transformers import AutoConfig

    try:
        architectures = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code).architectures or []
    except (OSError, ValueError) as err:
        raise _hub_error(base, err, "reward model config") from None
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{name} is a {', '.join(architectures)}, not a reward model (a sequence classifier with a "
                        "trained score head): train one with reward_modeling.py and merge it with "
                        "merge_peft_adapter.py")


def embedding_rows(model) -> int:
    """The rows of the model's input embedding table, also when DeepSpeed ZeRO-3 holds it partitioned (the local
    tensor is then empty and ``ds_shape`` is the full shape)."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_vocabulary(model, tokenizer, model_name: str, tokenizer_name: str) -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows (its ids would index past the
    table: an IndexError mid-training), before any training."""
    rows = embedding_rows(model)
    if len(tokenizer) > rows:
        raise UserError(f"the tokenizer {tokenizer_name} has {len(tokenizer)} tokens but the model {model_name} has "
                        f"{rows} token embeddings: pass the tokenizer the model was trained with "
                        "(--tokenizer_name_or_path), or a model whose vocabulary covers it")


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token (GPT-2 style) EOS as its pad, saying so; masks make it safe for
    SFT, reward modeling, DPO and generation (PPO needs a distinct pad and adds its own)."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise UserError("the tokenizer has neither a pad nor an EOS token: pass a tokenizer that has one")
    logger.warning("the tokenizer has no pad token: padding with EOS (%r)", tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token


def has_own_tokenizer(name: str) -> bool:
    """Whether a hub id, or a local folder holding tokenizer files (a bare model folder has none)."""
    folder = os.path.expanduser(name)
    if not os.path.isdir(folder):
        return True
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def load_reward_tokenizer(reward_model: str, tokenizer_name: str | None, fallback, trust_remote_code: bool = False):
    """The reward model's tokenizer: ``tokenizer_name``, else the one saved with the reward model, else
    ``fallback`` (the policy's). It pads (with EOS when it has no pad token: the score is read from the mask)."""
    name = tokenizer_name
    if name is None:
        if not has_own_tokenizer(reward_model):
            return fallback
        name = reward_model
    tokenizer = load_tokenizer(name, trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(spec: str | None, tokenizer, generation_config=None) -> list[int]:
    """Token ids that end a response: ``eos`` (the tokenizer's EOS and the model's own end-of-turn ids), one
    named token, or ``none``."""
    if spec is None or spec.lower() == "none":
        return []
    if spec.lower() == "eos":
        ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        for token in [extra] if isinstance(extra, int) else (extra or []):
            if token not in ids:
                ids.append(token)
        if not ids:
            raise UserError("--stop_token eos: the tokenizer has no EOS token; name one with --stop_token TOKEN")
        return ids
    token_id = tokenizer.convert_tokens_to_ids(spec)
    if token_id is None or token_id == tokenizer.unk_token_id:
        encoded = tokenizer(spec, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise UserError(f"--stop_token {spec!r} is not one token of this tokenizer ({len(encoded)} tokens)")
        token_id = encoded[0]
    return [token_id]


# ------------------------------------------------------------------------------------------ model pieces
def unwrap_peft(model):
    """The transformers model inside a PEFT wrapper (LoRA layers still in place), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The transformer trunk of a transformers model (``model.model`` for Llama, ``model.transformer`` ...)."""
    from torch import nn

    prefix = getattr(model, "base_model_prefix", None)
    trunk = getattr(model, prefix, None) if prefix else None
    if not isinstance(trunk, nn.Module):
        raise UserError(f"{type(model).__name__} has no trunk named by base_model_prefix ({prefix!r}): pass a "
                        "standard transformers model")
    return trunk


def score_head(model):
    """The scalar head of a sequence-classification model (``score``; ``classifier`` in some families)."""
    from torch import nn

    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise UserError(f"the reward model ({type(model).__name__}) has no 'score' or 'classifier' head: pass a model "
                    "saved by reward_modeling.py (AutoModelForSequenceClassification with num_labels=1)")


def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")  # attention_dropout, hidden_dropout, attn_pdrop, ...


def disable_dropout(model) -> None:
    """Dropout off in every form it takes, in place: ``nn.Dropout`` modules (LoRA's included), dropout rates
    that model code reads from a module attribute at run time (``self.attention_dropout`` in Llama, Qwen2 and
    Gemma attention, ``self.dropout`` in OPT and BART layers), and the config fields they come from (so a
    module built later, or a saved model, has none either).

    RL needs this (Huang et al. 2024): with dropout the log-probs of the rollout (eval mode) and of the update
    (train mode) differ before any update, and the PPO ratio no longer starts at 1."""
    from torch import nn

    configs = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if _is_dropout_name(name) and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and all(config is not seen for seen in configs):
            configs.append(config)
    while configs:
        config = configs.pop()
        for name, value in list(vars(config).items()):
            if _is_dropout_name(name) and isinstance(value, float):
                setattr(config, name, 0.0)
            elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text_config, ...)
                configs.append(value)
