"""Every dataset schema the toolkit reads, normalised to four canonical kinds.

Canonical rows (tokenizer-independent; the prompt is always a list of chat messages ending with a user turn,
or with a tool result):

* ``sft``:        ``{"prompt": [messages], "completion": str}``
* ``preference``: ``{"prompt": [messages], "chosen": str, "rejected": str}``
* ``prompt``:     ``{"prompt": [messages]}``
* ``unpaired``:   ``{"prompt": [messages], "completion": str, "label": bool}`` (KTO; a pair gives two rows)

Rows from data with a ``tools`` column (ShareGPT, messages, prompt-completion) also carry ``"tools"``: the tool
schemas as a JSON string (``""`` when the row has none). Canonical messages are ``{role, content}`` with the roles ``system``, ``user``,
``assistant``, ``tool_call`` (an assistant's tool calls, the content a JSON list of ``{name, arguments}``) and
``tool`` (a tool's result).

:func:`render` then turns canonical rows into what TRL's trainers take for a given tokenizer: conversational
message lists when the tokenizer has a chat template, otherwise optimum-habana's plain ``Question: ...\\n\\nAnswer: ``
text (multi-turn prompts as alternating Question/Answer blocks).

Source schemas (checked in this order, by their columns):

==================  ==================================================  =====================================
name                columns                                             notes
==================  ==================================================  =====================================
stack_exchange      question, response_j, response_k                    lvwerra/stack-exchange-paired; j wins
shp                 history, human_ref_A, human_ref_B, labels           Stanford SHP; labels=1 means A wins
sharegpt_pair       conversations, chosen, rejected                     ShareGPT pairs (LLaMA-Factory)
preference          prompt, chosen, rejected                            strings or message lists (UltraFeedback)
hh_rlhf             chosen, rejected                                    HH transcripts, or TRL's implicit prompt
sharegpt            conversations, (system), (tools), (label)           ShareGPT (FastChat, LLaMA-Factory)
messages            messages, (system), (tools), (label)                chat; the last assistant turn is the answer
alpaca              instruction, (input), output, (system), (history)   Alpaca / LLaMA-Factory
prompt_completion   prompt, completion, (tools), (label)                TRL's prompt-completion (and unpaired)
prompt_response     prompt, response
prompt_chosen       prompt, chosen                                      chosen as the SFT answer
text                text                                                TRL's language modeling (SFT only)
query               query                                               optimum-habana's PPO prompts
prompt_only         prompt                                              prompts only
==================  ==================================================  =====================================

Messages are ``{role, content}`` (OpenAI / Hugging Face) or ``{from, value}`` (ShareGPT: ``human``, ``gpt``,
``system``, ``function_call``, ``observation``); a ``content`` list of text parts (``{"type": "text", "text" | "value":
...}``) is joined. A part that is not text, or an ``images`` / ``videos`` / ``audios`` column, is refused
(:class:`Unsupported`): this toolkit trains text-only models. Tool calls (an assistant's OpenAI ``tool_calls``,
ShareGPT ``function_call`` turns) become ``tool_call`` messages, tool results (``tool``, ``observation``) ``tool``
messages. A ``label`` column (unpaired preference, KTO) keeps, for SFT, only the ``label: true`` rows.

Rendering tool calls: with a chat template, the conversation and its tools go through
``apply_chat_template(..., tools=...)`` (see :func:`chat_messages`); without one, in plain text::

    Tools: [{"name": "search_recipes", ...}]

    Question: I have chicken and rice.

    Answer: Tool call: [{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}]

    Tool result: {"recipes": [...]}

    Answer: I found two recipes...
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhfkit.errors import UserError

KINDS = ("sft", "preference", "prompt", "unpaired")
CANONICAL_COLUMNS = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
    "unpaired": ("prompt", "completion", "label"),
}
ANSWER_COLUMNS = {"sft": ("completion",), "preference": ("chosen", "rejected"), "prompt": (),
                  "unpaired": ("completion",)}
QUESTION_PREFIX = "Question: "
ANSWER_PREFIX = "\n\nAnswer: "
TOOLS_PREFIX = "Tools: "
TOOL_CALL_PREFIX = "Tool call: "
TOOL_RESULT_PREFIX = "Tool result: "


class InvalidRow(Exception):
    """A row with an empty or missing field; dropped (and counted) or reported, by the caller's choice."""


class Unsupported(UserError):
    """Data this toolkit cannot train on at all (images, audio): the whole dataset is refused in one line."""


MEDIA_COLUMNS = ("images", "videos", "audios", "image", "video", "audio")
TEXT_PART_TYPES = ("text", "input_text", "output_text")
# ShareGPT role names (FastChat, LLaMA-Factory) -> chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "system": "system"}
TOOL_RESULT_ROLES = ("observation", "tool", "function", "ipython")  # a tool's answer
TOOL_CALL_ROLES = ("function_call", "tool_call")  # ShareGPT's assistant tool call (and our canonical role)


# --------------------------------------------------------------------------------------------------- helpers
def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise InvalidRow(f"missing '{key}'")
    if not isinstance(value, str):
        raise InvalidRow(f"'{key}' is {type(value).__name__}, expected text")
    if not value.strip():
        raise InvalidRow(f"empty '{key}'")
    return value


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def content_text(content: Any, key: str) -> str:
    """A message's content as text: a string, or a list of parts whose text parts are joined (``text`` or, as
    LLaMA-Factory writes them, ``value``). A non-text part is refused for the whole dataset."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type", "text") if isinstance(part, dict) else None
            if kind not in TEXT_PART_TYPES:
                raise Unsupported(f"a message in '{key}' holds a {kind or type(part).__name__} part: this toolkit trains "
                                  "text-only models; keep only the text parts (or drop those rows)")
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise InvalidRow(f"a text part in '{key}' has no text")
            texts.append(text)
        return "".join(texts)
    if content is None:
        return ""
    raise InvalidRow(f"a message content in '{key}' is {type(content).__name__}, expected text or a list of parts")


def _tool_calls(calls: Any, key: str) -> str:
    """Tool calls as canonical JSON text: a list of ``{name, arguments}`` (arguments an object), from OpenAI's
    ``[{type, function: {name, arguments}}]`` (arguments often a JSON string) or ShareGPT's ``{name, arguments}``."""
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except json.JSONDecodeError:
            raise InvalidRow(f"a tool call in '{key}' is not valid JSON") from None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        raise InvalidRow(f"a tool call in '{key}' is not a {{name, arguments}} object or a list of them")
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRow(f"a tool call in '{key}' has no function name")
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise InvalidRow(f"the arguments of tool call {name!r} in '{key}' are not valid JSON") from None
        out.append({"name": name, "arguments": arguments})
    return json.dumps(out, ensure_ascii=False)


def _messages(message: Any, key: str) -> list[dict]:
    """One source message as canonical messages, from ``{role, content}`` (OpenAI / Hugging Face, with
    ``tool_calls``) or ShareGPT's ``{from, value}``: an assistant message with text and tool calls gives two."""
    if not isinstance(message, dict):
        raise InvalidRow(f"'{key}' holds an item that is not a {{role, content}} message")
    if "role" in message and ("content" in message or message.get("tool_calls")):
        role, content = message["role"], message.get("content")
    elif "from" in message and "value" in message:
        role, content = message["from"], message["value"]
    else:
        raise InvalidRow(f"'{key}' holds an item that is not a {{role, content}} or {{from, value}} message")
    if role in TOOL_CALL_ROLES:
        return [{"role": "tool_call", "content": _tool_calls(content, key)}]
    if role in TOOL_RESULT_ROLES:
        if isinstance(content, (dict, int, float, bool)):
            content = json.dumps(content, ensure_ascii=False)  # a structured result, as JSON text
        return [{"role": "tool", "content": content_text(content, key)}]
    role = SHAREGPT_ROLES.get(role, role)
    if role not in ("system", "user", "assistant"):
        raise InvalidRow(f"'{key}' holds a message with role {role!r} (expected system, user, assistant or tool)")
    text = content_text(content, key)
    calls = message.get("tool_calls") or message.get("function_call")
    if calls and role == "assistant":
        said = [{"role": "assistant", "content": text}] if text.strip() else []
        return [*said, {"role": "tool_call", "content": _tool_calls(calls, key)}]
    if not text.strip():
        raise InvalidRow(f"empty message content in '{key}'")
    return [{"role": role, "content": text}]


def _check_messages(messages: Any, key: str) -> list[dict]:
    if isinstance(messages, dict):
        messages = [messages]  # ShareGPT pairs give chosen / rejected as one message
    if not isinstance(messages, list) or not messages:
        raise InvalidRow(f"'{key}' is not a non-empty list of messages")
    return [m for message in messages for m in _messages(message, key)]


def tools_json(value: Any) -> str:
    """A row's ``tools`` column (a JSON string, as glaive and LLaMA-Factory write it, or a list of schemas) as
    canonical JSON text; ``""`` for none."""
    if value is None or (isinstance(value, (str, list)) and not value):
        return ""
    if isinstance(value, str):
        if not value.strip():
            return ""
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidRow("'tools' is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InvalidRow("'tools' is not a list of tool schemas")
    return json.dumps(value, ensure_ascii=False) if value else ""


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    """A ``system`` column (ShareGPT, LLaMA-Factory's Alpaca) leads the conversation as its system message."""
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


PROMPT_ENDS = ("user", "tool")  # a prompt ends with a question, or with a tool's result the assistant answers


def _split_last_assistant(messages: list[dict], key: str) -> tuple[list[dict], str]:
    """(prompt messages, last assistant answer) of a conversation that ends with the assistant."""
    if messages[-1]["role"] != "assistant":
        if messages[-1]["role"] == "tool_call":
            raise InvalidRow(f"'{key}' ends with a tool call: the answer trained on must be the assistant's text")
        raise InvalidRow(f"'{key}' does not end with an assistant message")
    prompt = messages[:-1]
    if not prompt or prompt[-1]["role"] not in PROMPT_ENDS:
        raise InvalidRow(f"'{key}' has no user message before its last assistant answer")
    return prompt, messages[-1]["content"]


def prompt_messages(value: Any, key: str) -> list[dict]:
    """A prompt given either as text or as messages; trailing assistant turns are not part of a prompt."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRow(f"empty '{key}'")
        return _user(value)
    messages = _check_messages(value, key)
    while messages and messages[-1]["role"] in ("assistant", "tool_call"):
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in PROMPT_ENDS:
        raise InvalidRow(f"'{key}' has no user message")
    return messages


def _answer(value: Any, key: str) -> tuple[list[dict] | None, str]:
    """An answer given as text, or as a message list whose last message is the assistant's answer.

    Returns (the conversation before the answer, or None for text; the answer text).
    """
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRow(f"empty '{key}'")
        return None, value
    messages = _check_messages(value, key)
    if len(messages) == 1:
        if messages[0]["role"] != "assistant":
            raise InvalidRow(f"'{key}' holds no assistant answer")
        return None, messages[0]["content"]
    return _split_last_assistant(messages, key)


# ------------------------------------------------------------------------------------------ HH-RLHF transcripts
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[dict]:
    """Split an Anthropic HH transcript (``\\n\\nHuman: ...\\n\\nAssistant: ...``) into chat messages.

    The final assistant turn may be empty (the data has such rows); content is stripped of the one space
    that follows each role marker and of surrounding whitespace.
    """
    if not isinstance(text, str):
        raise InvalidRow("HH transcript is not text")
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise InvalidRow("text is not an HH transcript (expected it to start with '\\n\\nHuman:')")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def _hh_pair(row: dict) -> tuple[list[dict], str, str]:
    """Prompt and answers of an implicit-prompt pair: raw HH transcripts, or (TRL style) two message lists."""
    if isinstance(row.get("chosen"), (list, dict)):
        chosen = _check_messages(row.get("chosen"), "chosen")
        rejected = _check_messages(row.get("rejected"), "rejected")
        if len(chosen) < 2:
            raise InvalidRow("'chosen' is a single message: an implicit-prompt pair needs the whole conversation "
                             "(or give the prompt in a 'prompt' or 'conversations' column)")
    else:
        chosen = parse_hh_transcript(row.get("chosen"))
        rejected = parse_hh_transcript(row.get("rejected"))
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise InvalidRow(f"HH '{name}' transcript does not end with an Assistant turn")
        if not conv[-1]["content"]:
            raise InvalidRow(f"empty final Assistant turn in HH '{name}'")
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        raise InvalidRow("HH chosen and rejected transcripts do not share their conversation before the last turn")
    if not prompt or prompt[-1]["role"] != "user" or any(not m["content"] for m in prompt):
        raise InvalidRow("HH transcript has an empty turn before the final answer")
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


# ----------------------------------------------------------------------------------------------- the schemas
@dataclass(frozen=True)
class Schema:
    name: str
    required: tuple[str, ...]
    description: str
    # each converter returns the canonical row for its kind, or raises InvalidRow; None: kind not available
    sft: Callable[[dict], dict] | None = None
    preference: Callable[[dict], dict] | None = None
    prompt: Callable[[dict], dict] | None = None
    optional: tuple[str, ...] = ()  # columns read when present; any other column is named as ignored

    def reads(self, kind: str) -> bool:
        """Whether this schema gives rows of ``kind``: unpaired preference from a labelled SFT schema (with its
        ``label`` column) or from pairs."""
        if kind == "unpaired":
            return self.preference is not None or (self.sft is not None and "label" in self.optional)
        return getattr(self, kind) is not None

    def ignored(self, columns) -> list[str]:
        return [c for c in columns if c not in self.required and c not in self.optional]


def _pref(prompt, chosen, rejected):
    if chosen == rejected:
        raise InvalidRow("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _chosen_as_sft(pair: dict) -> dict:
    """A preference pair's SFT example: the prompt and its chosen answer."""
    return {"prompt": pair["prompt"], "completion": pair["chosen"]}


def _ufb_preference(row):
    prompt_value = row.get("prompt")
    chosen_conv, chosen = _answer(row.get("chosen"), "chosen")
    rejected_conv, rejected = _answer(row.get("rejected"), "rejected")
    if chosen_conv is not None:  # UltraFeedback: the message lists carry the conversation
        if rejected_conv is not None and rejected_conv != chosen_conv:
            raise InvalidRow("chosen and rejected conversations differ before the answer")
        prompt = chosen_conv
    else:
        prompt = prompt_messages(prompt_value, "prompt")
    return _pref(prompt, chosen, rejected)


def _shp_pair(row):
    a, b = _text(row, "human_ref_A"), _text(row, "human_ref_B")
    label = row.get("labels")
    if label not in (0, 1):
        raise InvalidRow("SHP 'labels' must be 0 or 1")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return _user(_text(row, "history")), chosen, rejected


def _alpaca_prompt(row):
    """LLaMA-Factory's Alpaca: ``system`` leads, ``history`` ([[question, answer], ...]) gives the earlier turns."""
    instruction = _text(row, "instruction")
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    turns = []
    for pair in row.get("history") or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            raise InvalidRow("'history' must be a list of [question, answer] pairs of text")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return _with_system(row, [*turns, *_user(instruction)])


def _sharegpt(row, key: str = "conversations") -> list[dict]:
    return _with_system(row, _check_messages(row.get(key), key))


def _sharegpt_sft(row):
    prompt, answer = _split_last_assistant(_sharegpt(row), "conversations")
    return {"prompt": prompt, "completion": answer}


def _sharegpt_pair(row):
    """LLaMA-Factory's ShareGPT pairs: the conversation so far, then one chosen and one rejected answer."""
    prompt = prompt_messages(_sharegpt(row), "conversations")
    answers = []
    for key in ("chosen", "rejected"):
        conv, answer = _answer(row.get(key), key)
        if conv is not None:
            raise InvalidRow(f"'{key}' holds a conversation; ShareGPT pairs give the answer alone")
        answers.append(answer)
    return _pref(prompt, *answers)


def _completion(row):
    """TRL's prompt-completion: the completion as text or as a list of assistant messages."""
    value = row.get("completion")
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = _check_messages(value, "completion")
        if any(m["role"] != "assistant" for m in messages):
            raise InvalidRow("'completion' holds a message that is not the assistant's")
        return "\n\n".join(m["content"] for m in messages)
    return _text(row, "completion")


def _messages_sft(row):
    prompt, answer = _split_last_assistant(_sharegpt(row, "messages"), "messages")
    return {"prompt": prompt, "completion": answer}


def _hh_sft(row):
    prompt, chosen, _ = _hh_pair(row)
    return {"prompt": prompt, "completion": chosen}


SCHEMAS: tuple[Schema, ...] = (
    Schema(
        "stack_exchange",
        ("question", "response_j", "response_k"),
        "question / response_j / response_k (stack-exchange-paired; response_j preferred)",
        sft=lambda r: {"prompt": _user(_text(r, "question")), "completion": _text(r, "response_j")},
        preference=lambda r: _pref(_user(_text(r, "question")), _text(r, "response_j"), _text(r, "response_k")),
        prompt=lambda r: {"prompt": _user(_text(r, "question"))},
    ),
    Schema(
        "shp",
        ("history", "human_ref_A", "human_ref_B", "labels"),
        "history / human_ref_A / human_ref_B / labels (Stanford SHP)",
        sft=lambda r: (lambda p, c, _: {"prompt": p, "completion": c})(*_shp_pair(r)),
        preference=lambda r: _pref(*_shp_pair(r)),
        prompt=lambda r: {"prompt": _user(_text(r, "history"))},
    ),
    Schema(
        "sharegpt_pair",
        ("conversations", "chosen", "rejected"),
        "conversations / chosen / rejected as ShareGPT {from, value} messages (LLaMA-Factory's pairs)",
        sft=lambda r: _chosen_as_sft(_sharegpt_pair(r)),
        preference=_sharegpt_pair,
        prompt=lambda r: {"prompt": prompt_messages(_sharegpt(r), "conversations")},
        optional=("system", "tools"),
    ),
    Schema(
        "preference",
        ("prompt", "chosen", "rejected"),
        "prompt / chosen / rejected, as text or message lists (UltraFeedback binarized)",
        sft=lambda r: _chosen_as_sft(_ufb_preference(r)),
        preference=_ufb_preference,
        prompt=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt")},
    ),
    Schema(
        "hh_rlhf",
        ("chosen", "rejected"),
        "chosen / rejected full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts (Anthropic HH-RLHF)",
        sft=_hh_sft,
        preference=lambda r: _pref(*_hh_pair(r)),
        prompt=lambda r: {"prompt": _hh_pair(r)[0]},
    ),
    Schema(
        "sharegpt",
        ("conversations",),
        "conversations: a chat as ShareGPT {from, value} turns, with optional system and tools columns (FastChat, "
        "LLaMA-Factory)",
        sft=_sharegpt_sft,
        prompt=lambda r: {"prompt": prompt_messages(_sharegpt(r), "conversations")},
        optional=("system", "tools", "id", "label"),
    ),
    Schema(
        "messages",
        ("messages",),
        "messages: a chat as a list of {role, content} (its last assistant turn is the answer)",
        sft=_messages_sft,
        prompt=lambda r: {"prompt": prompt_messages(_sharegpt(r, "messages"), "messages")},
        optional=("system", "tools", "id", "label"),
    ),
    Schema(
        "alpaca",
        ("instruction", "output"),
        "instruction / input / output (Alpaca)",
        sft=lambda r: {"prompt": _alpaca_prompt(r), "completion": _text(r, "output")},
        prompt=lambda r: {"prompt": _alpaca_prompt(r)},
        optional=("input", "system", "history"),
    ),
    Schema(
        "prompt_completion",
        ("prompt", "completion"),
        "prompt / completion, as text or message lists (TRL's prompt-completion; with label: unpaired preference)",
        sft=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt"), "completion": _completion(r)},
        prompt=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt")},
        optional=("tools", "label"),
    ),
    Schema(
        "prompt_response",
        ("prompt", "response"),
        "prompt / response",
        sft=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt"), "completion": _text(r, "response")},
        prompt=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt")},
    ),
    Schema(
        "prompt_chosen",
        ("prompt", "chosen"),
        "prompt / chosen (text; chosen is the answer)",
        sft=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt"), "completion": _answer(r.get("chosen"), "chosen")[1]},
        prompt=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt")},
    ),
    Schema(
        "text",
        ("text",),
        "text (TRL's language modeling: the whole text is trained on; SFT only)",
        sft=lambda r: {"prompt": [], "completion": _text(r, "text")},
    ),
    Schema(
        "query",
        ("query",),
        "query (optimum-habana's PPO prompts: a JSON list of {\"query\": ...}; prompts only)",
        prompt=lambda r: {"prompt": _user(_text(r, "query"))},
    ),
    Schema(
        "prompt_only",
        ("prompt",),
        "prompt (prompts only)",
        prompt=lambda r: {"prompt": prompt_messages(r.get("prompt"), "prompt")},
    ),
)
SCHEMA_BY_NAME = {schema.name: schema for schema in SCHEMAS}


def accepted_schemas(kind: str) -> str:
    return "; ".join(s.description for s in SCHEMAS if s.reads(kind))


def detect_schema(columns: list[str] | tuple[str, ...], kind: str, source: str = "dataset") -> Schema:
    """The first schema whose required columns are all present and that can produce ``kind``.

    Raises :class:`UserError` listing the columns found and the schemas accepted for ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    present = set(columns)
    media = [c for c in columns if c in MEDIA_COLUMNS]
    if media:
        raise Unsupported(f"{source} has a '{media[0]}' column: this toolkit trains text-only models; drop that column "
                          "(and the <image>-style placeholders in the text) or use a multimodal trainer")
    matching = [s for s in SCHEMAS if set(s.required) <= present]
    for schema in matching:
        # unpaired preference (KTO): a labelled SFT schema with its label column, or pairs (each gives two rows)
        labelled = "label" in present or schema.preference is not None
        if schema.reads(kind) and (kind != "unpaired" or labelled):
            return schema
    found = ", ".join(sorted(present)) or "none"
    hint = "; unpaired data needs a 'label' column (true / false) or preference pairs" if kind == "unpaired" else ""
    if matching:
        raise UserError(
            f"{source} has the {matching[0].name} schema ({matching[0].description}), which has no {kind} data; "
            f"{kind} needs one of: {accepted_schemas(kind)}{hint}"
        )
    raise UserError(f"{source} has columns [{found}], which match no known schema; {kind} accepts: "
                    f"{accepted_schemas(kind)}{hint}")


def convert_row(schema: Schema, kind: str, row: dict) -> dict:
    """The canonical row of ``kind`` for one source row (raises :class:`InvalidRow`); a schema that reads
    ``tools`` adds them when the data has that column (``""`` for a row without)."""
    out = getattr(schema, kind)(row)
    if "tools" in schema.optional and "tools" in row:
        out["tools"] = tools_json(row.get("tools"))
    return out


def convert_unpaired(schema: Schema, row: dict, label) -> list[dict]:
    """Canonical unpaired rows of one source row: the labelled answer, or a pair's chosen (desirable) and rejected
    (undesirable) answers."""
    if schema.preference is not None and label is None:
        pair = convert_row(schema, "preference", row)
        extra = {"tools": pair["tools"]} if "tools" in pair else {}
        return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True, **extra},
                {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False, **extra}]
    return [{**convert_row(schema, "sft", row), "label": bool(label)}]


# ------------------------------------------------------------------------------------------------ rendering
def messages_to_text(messages: list[dict], tools: str = "") -> str:
    """optimum-habana's plain prompt format (its ``examples/trl`` scripts) for models without a chat template.

    A single question gives ``Question: {q}\\n\\nAnswer: ``; earlier turns come first as
    ``Question: ...\\n\\nAnswer: ...`` blocks separated by a blank line; a system message leads as its own
    paragraph, then the ``Tools: [...]`` paragraph. A tool call is the assistant's ``Tool call: [...]``, a tool's
    result ``Tool result: ...`` followed by ``Answer: `` as after a question.
    """
    parts: list[str] = []
    lead = [messages[0]] if messages and messages[0]["role"] == "system" else []
    for message in lead:
        parts.append(message["content"] + "\n\n")
    if tools:
        parts.append(TOOLS_PREFIX + tools + "\n\n")
    for message in messages[len(lead):]:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(content + "\n\n")
        elif role == "user":
            parts.append(QUESTION_PREFIX + content + ANSWER_PREFIX)
        elif role == "tool":
            parts.append(TOOL_RESULT_PREFIX + content + ANSWER_PREFIX)
        elif role == "tool_call":
            parts.append(TOOL_CALL_PREFIX + content + "\n\n")
        else:
            parts.append(content + "\n\n")
    return "".join(parts)


def prompt_text(prompt) -> str:
    """A canonical prompt (text, or a message list) as plain text, for rule rewards, judges and logs."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(m.get("content", "") for m in prompt if isinstance(m, dict))


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def has_tools(row: dict) -> bool:
    """Whether a canonical row has tool schemas, tool calls or tool results."""
    return bool(row.get("tools")) or any(m["role"] in ("tool", "tool_call") for m in row["prompt"] or [])


def chat_messages(messages: list[dict]) -> list[dict]:
    """Canonical messages as a chat template takes them: a ``tool_call`` message becomes the assistant's
    ``tool_calls`` (joined to the assistant text just before it), in the Hugging Face format
    ``{"type": "function", "function": {"name", "arguments": {...}}}``; ``tool`` results stay ``tool`` messages."""
    out: list[dict] = []
    for message in messages:
        if message["role"] != "tool_call":
            out.append({"role": message["role"], "content": message["content"]})
            continue
        calls = [{"type": "function", "function": call} for call in json.loads(message["content"])]
        if out and out[-1]["role"] == "assistant" and "tool_calls" not in out[-1]:
            out[-1]["tool_calls"] = calls
        else:
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
    return out


def chat_template_text(tokenizer, messages: list[dict], tools: str = "", add_generation_prompt: bool = False) -> str:
    """A conversation through the tokenizer's chat template, with its tools (``apply_chat_template(...,
    tools=...)``), as text."""
    return tokenizer.apply_chat_template(chat_messages(messages), tools=json.loads(tools) if tools else None,
                                         tokenize=False, add_generation_prompt=add_generation_prompt)


def render_row(row: dict, kind: str, conversational: bool, tokenizer=None) -> dict:
    """Canonical row -> TRL's input format: conversational (chat template) or plain text.

    In plain text the prompt ends on a token boundary: optimum-habana's ``Answer: `` trailing space moves to the
    start of each answer (``"...Answer:"`` + ``" The ..."``). The joined text is optimum-habana's format exactly,
    but tokenizers merge a space into the next word, so a prompt ending in a bare space would be tokenized
    differently alone (at generation time) than inside prompt + answer (in training).

    With ``tokenizer`` (a dataset with tools, under a chat template) the chat template is applied here, tools
    included, and the row is returned as text: TRL would otherwise receive the tool calls through Arrow, which
    gives every call the union of all calls' argument names (as nulls).
    """
    answers = ANSWER_COLUMNS[kind]
    rest = {key: row[key] for key in row if key not in answers and key not in ("prompt", "tools")}
    if not row["prompt"]:  # language modeling (a text column): the whole text is the answer, never a chat
        return {"prompt": "", **{key: row[key] for key in answers}, **rest}
    tools = row.get("tools") or ""
    if conversational and tokenizer is not None:
        prompt = chat_template_text(tokenizer, row["prompt"], tools, add_generation_prompt=True)
        out = {"prompt": strip_bos(tokenizer, prompt)}
        for key in answers:
            full = chat_template_text(tokenizer, [*row["prompt"], {"role": "assistant", "content": row[key]}], tools)
            full = strip_bos(tokenizer, full)
            if not full.startswith(out["prompt"]):
                raise UserError("the chat template renders a prompt alone differently from the prompt inside the "
                                "conversation, so the answer cannot be cut out: use a template that renders both alike")
            out[key] = full[len(out["prompt"]):]
        return {**out, **rest}
    if conversational:
        return {"prompt": row["prompt"], **{key: [{"role": "assistant", "content": row[key]}] for key in answers},
                **rest}
    text = messages_to_text(row["prompt"], tools)
    prompt = text.rstrip(" ")
    gap = text[len(prompt) :]
    return {"prompt": prompt, **{key: gap + row[key] for key in answers}, **rest}


def strip_bos(tokenizer, text: str) -> str:
    """Template text without a leading BOS that the tokenizer adds itself (TRL tokenizes text rows with special
    tokens: the BOS would otherwise come twice)."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        return text[len(bos):]
    return text


def _adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS in front of what it encodes (probed once per tokenizer)."""
    known = getattr(tokenizer, "_rlhfkit_adds_bos", None)
    if known is None:
        ids = tokenizer("x", add_special_tokens=True)["input_ids"] if getattr(tokenizer, "add_bos_token", True) else []
        known = bool(ids) and ids[0] == tokenizer.bos_token_id
        try:
            tokenizer._rlhfkit_adds_bos = known
        except AttributeError:  # a tokenizer that takes no new attributes: probe again next time
            pass
    return known
