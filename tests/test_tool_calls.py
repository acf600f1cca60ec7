"""Tool calls: ShareGPT ``function_call`` / ``observation`` turns and a ``tools`` column (glaive, as LLaMA-Factory
ships it), OpenAI-style assistant ``tool_calls`` and ``tool`` messages. They become canonical ``tool_call`` /
``tool`` messages; a chat template receives them as ``tool_calls`` with the row's tools
(``apply_chat_template(..., tools=...)``), plain text gets the documented ``Tools:`` / ``Tool call:`` /
``Tool result:`` rendering; nothing is dropped as empty, and sft.py trains on both renderings.
"""

from __future__ import annotations

import json
import logging

import pytest
from conftest import REPO, fixture_path, run_script

from rlhfkit import data, models, schemas

STORIES = ("models", "stories260K")
GLAIVE = ("data", "llamafactory-glaive_toolcall_en_demo.json")
# a minimal chat template that renders tools and tool calls (as real ones do, in its own markup)
TOOL_TEMPLATE = (
    "{%- if tools %}<|tools|>{{ tools | tojson }}\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|assistant|>"
    "{%- for c in m.tool_calls %}<call>{{ c.function | tojson }}</call>{% endfor %}<|end|>\n"
    "{%- else %}<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}


def openai_rows(n: int = 1) -> list[dict]:
    """OpenAI-style chats: a tool call (arguments as a JSON string), its result, then the answer."""
    return [{"messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": f"巴黎的天气怎么样？ ({i})"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": json.dumps({"city": "巴黎"})}}]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": "18C, sunny"},
        {"role": "assistant", "content": f"It is 18C and sunny in Paris ({i})."}],
        "tools": [WEATHER_TOOL]} for i in range(n)]


def short_rows(n: int) -> list[dict]:
    """Tool-call chats that fit the embedded model's 256 positions under its small offline tokenizer."""
    return [{"messages": [
        {"role": "user", "content": "How was the pizza?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "rate", "arguments": "{}"}}]},
        {"role": "tool", "content": "good"},
        {"role": "assistant", "content": f"The pizza was good {i}."}],
        "tools": [{"type": "function", "function": {"name": "rate", "parameters": {}}}]} for i in range(n)]


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_glaive_function_calls_become_tool_turns(caplog):
    path = fixture_path(*GLAIVE)
    raw = json.loads(path.read_text(encoding="utf-8"))
    with caplog.at_level(logging.WARNING):
        rows = data.load_canonical(str(path), "sft")
    assert len(rows) == len(raw) == 300  # nothing dropped, nothing ignored
    assert "dropped" not in caplog.text and "ignored columns" not in caplog.text
    index = next(i for i, r in enumerate(raw) if any(t["from"] == "function_call" for t in r["conversations"]))
    source, row = raw[index]["conversations"], rows[index]
    roles = {"human": "user", "gpt": "assistant", "function_call": "tool_call", "observation": "tool"}
    assert [m["role"] for m in row["prompt"]] == [roles[t["from"]] for t in source[:-1]]
    call = next(t for t in source if t["from"] == "function_call")
    canonical_call = next(m for m in row["prompt"] if m["role"] == "tool_call")
    assert json.loads(canonical_call["content"]) == [json.loads(call["value"])]
    assert json.loads(row["tools"]) == json.loads(raw[index]["tools"])
    assert row["completion"] == source[-1]["value"]


def test_plain_text_rendering_of_tools_calls_and_results():
    tokenizer = models.load_tokenizer(str(fixture_path(*STORIES)))
    rows = data.load_canonical(str(fixture_path(*GLAIVE)), "sft")
    row = next(r for r in rows if any(m["role"] == "tool" for m in r["prompt"]))
    rendered = schemas.render_row(row, "sft", conversational=False)
    call = next(m for m in row["prompt"] if m["role"] == "tool_call")
    result = next(m for m in row["prompt"] if m["role"] == "tool")
    assert rendered["prompt"].startswith("Tools: " + row["tools"] + "\n\nQuestion: ")
    assert f"\n\nAnswer: Tool call: {call['content']}\n\nTool result: {result['content']}\n\nAnswer:" in rendered["prompt"]
    assert rendered["completion"] == " " + row["completion"]
    assert data.render(rows.select(range(3)), "sft", tokenizer)[0]["prompt"].startswith("Tools: ")


def test_openai_tool_calls_and_tool_results(tmp_path):
    rows = data.load_canonical(str(write_json(tmp_path / "chat.json", openai_rows(2))), "sft")
    assert len(rows) == 2
    prompt = rows[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "tool_call", "tool"]
    assert json.loads(prompt[2]["content"]) == [{"name": "get_weather", "arguments": {"city": "巴黎"}}]
    assert prompt[3]["content"] == "18C, sunny"
    assert json.loads(rows[0]["tools"]) == [WEATHER_TOOL]
    assert rows[0]["completion"] == "It is 18C and sunny in Paris (0)."


def test_an_answer_that_is_a_tool_call_is_dropped_with_its_reason(tmp_path, caplog):
    row = openai_rows(1)[0]
    row["messages"] = row["messages"][:3]  # ends with the assistant's tool call
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="ends with a tool call"):
        data.load_canonical(str(write_json(tmp_path / "call.json", [row])), "sft")
    assert "empty message content" not in caplog.text


@pytest.mark.slow
def test_the_chat_template_receives_tool_calls_and_tools(tmp_path):
    """Under a chat template, the conversation goes through ``apply_chat_template(..., tools=...)`` with the calls
    as Hugging Face ``tool_calls`` (arguments as objects), and the row is cut into prompt and completion text."""
    tokenizer = models.load_tokenizer(str(fixture_path("tokenizers", "gpt2")))
    tokenizer.chat_template = TOOL_TEMPLATE
    rows = data.load_canonical(str(write_json(tmp_path / "chat.json", openai_rows(2))), "sft")
    rendered = data.render(rows, "sft", tokenizer)
    source = openai_rows(1)[0]["messages"]
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "巴黎"}}}]
    expected = tokenizer.apply_chat_template(
        [*[{"role": m["role"], "content": m["content"]} for m in source[:2]],
         {"role": "assistant", "content": "", "tool_calls": calls},
         {"role": "tool", "content": "18C, sunny"}, source[4]], tools=[WEATHER_TOOL], tokenize=False)
    assert rendered[0]["prompt"] + rendered[0]["completion"] == expected
    assert '<call>{"name": "get_weather", "arguments": {"city": "巴黎"}}</call>' in rendered[0]["prompt"]
    assert rendered[0]["prompt"].startswith("<|tools|>") and rendered[0]["prompt"].endswith("<|assistant|>")
    assert rendered[0]["completion"] == "It is 18C and sunny in Paris (0).<|end|>\n"
    plain = data.load_canonical(str(write_json(tmp_path / "plain.json", [{"prompt": "Hi", "completion": "Hello"}])),
                                "sft")
    assert data.render(plain, "sft", tokenizer)[0]["prompt"] == [{"role": "user", "content": "Hi"}]  # stays a chat


@pytest.mark.slow
def test_sft_trains_on_tool_calls_in_plain_text_and_through_a_chat_template(tmp_path, embedded_root):
    """Two steps each: glaive's rows on stories260K (no chat template: plain text), and OpenAI tool calls on the
    embedded model with a tool-aware chat template (the template renders the rows)."""
    common = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no",
              "--disable_tqdm", "True", "--report_to", "none", "--bf16", "False"]
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    tokenizer.chat_template = TOOL_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "tool-tokenizer")
    runs = {
        "plain": ["--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name", str(fixture_path(*GLAIVE)),
                  "--max_length", "512", "--max_train_samples", "32"],
        "template": ["--model_name_or_path", str(embedded_root / "model"), "--tokenizer_name_or_path",
                     str(tmp_path / "tool-tokenizer"), "--dataset_name",
                     str(write_json(tmp_path / "chat.json", short_rows(8))), "--max_length", "256"],
    }
    for name, flags in runs.items():
        out = tmp_path / name
        result = run_script(str(REPO / "sft.py"), *flags, "--output_dir", str(out), *common)
        assert result.returncode == 0, (name, result.stderr[-3000:])
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert history[-1]["step"] == 2 and any("train_loss" in h for h in history), name
    assert "the chat template renders the conversations and their tools" in result.stderr
