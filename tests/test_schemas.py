"""Unit tests of rlhfkit/schemas.py on hand-written rows: every schema, every kind it supports."""

from __future__ import annotations

import pytest

from rlhfkit import schemas
from rlhfkit.errors import UserError
from rlhfkit.schemas import InvalidRow, convert_row, detect_schema, messages_to_text, render_row


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def conv(name, kind, row):
    return convert_row(schemas.SCHEMA_BY_NAME[name], kind, row)


# ------------------------------------------------------------------------------------------ stack_exchange
SE_ROW = {"question": "How do I sort a list?", "response_j": "Use sorted().", "response_k": "You can't.", "gold_j": 1}


def test_stack_exchange_all_kinds():
    assert conv("stack_exchange", "sft", SE_ROW) == {
        "prompt": [user("How do I sort a list?")],
        "completion": "Use sorted().",
    }
    assert conv("stack_exchange", "preference", SE_ROW) == {
        "prompt": [user("How do I sort a list?")],
        "chosen": "Use sorted().",
        "rejected": "You can't.",
    }
    assert conv("stack_exchange", "prompt", SE_ROW) == {"prompt": [user("How do I sort a list?")]}


def test_stack_exchange_identical_answers_are_invalid():
    row = {**SE_ROW, "response_k": SE_ROW["response_j"]}
    with pytest.raises(InvalidRow, match="identical"):
        conv("stack_exchange", "preference", row)


@pytest.mark.parametrize("bad", [None, "", "   \n", 3])
def test_stack_exchange_empty_or_missing_field_is_invalid(bad):
    with pytest.raises(InvalidRow, match="question"):
        conv("stack_exchange", "sft", {**SE_ROW, "question": bad})


# ------------------------------------------------------------------------------------------------------ shp
SHP_ROW = {"history": "Best pizza topping?", "human_ref_A": "Basil.", "human_ref_B": "Pineapple.", "labels": 1}


def test_shp_label_1_means_a_chosen():
    assert conv("shp", "preference", SHP_ROW) == {
        "prompt": [user("Best pizza topping?")],
        "chosen": "Basil.",
        "rejected": "Pineapple.",
    }
    assert conv("shp", "sft", SHP_ROW) == {"prompt": [user("Best pizza topping?")], "completion": "Basil."}


def test_shp_label_0_means_b_chosen():
    row = {**SHP_ROW, "labels": 0}
    assert conv("shp", "preference", row) == {
        "prompt": [user("Best pizza topping?")],
        "chosen": "Pineapple.",
        "rejected": "Basil.",
    }
    assert conv("shp", "sft", row)["completion"] == "Pineapple."
    assert conv("shp", "prompt", row) == {"prompt": [user("Best pizza topping?")]}


@pytest.mark.parametrize("label", [2, -1, None, "1"])
def test_shp_other_labels_are_invalid(label):
    with pytest.raises(InvalidRow, match="labels"):
        conv("shp", "preference", {**SHP_ROW, "labels": label})


# -------------------------------------------------------------------------------------------------- preference
def test_preference_with_strings_all_kinds():
    row = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    assert conv("preference", "preference", row) == {"prompt": [user("Say hi.")], "chosen": "Hi!", "rejected": "No."}
    assert conv("preference", "sft", row) == {"prompt": [user("Say hi.")], "completion": "Hi!"}
    assert conv("preference", "prompt", row) == {"prompt": [user("Say hi.")]}


def test_preference_with_ultrafeedback_message_lists():
    row = {
        "prompt": "What is 2+2?",
        "prompt_id": "abc",
        "chosen": [user("What is 2+2?"), assistant("4")],
        "rejected": [user("What is 2+2?"), assistant("5")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    out = conv("preference", "preference", row)
    assert out == {"prompt": [user("What is 2+2?")], "chosen": "4", "rejected": "5"}
    assert isinstance(out["chosen"], str) and isinstance(out["rejected"], str)
    assert isinstance(out["prompt"], list)
    assert conv("preference", "sft", row) == {"prompt": [user("What is 2+2?")], "completion": "4"}
    assert conv("preference", "prompt", row) == {"prompt": [user("What is 2+2?")]}


def test_preference_multi_turn_message_lists_keep_the_conversation_as_prompt():
    history = [user("Hi"), assistant("Hello, how can I help?"), user("Tell a joke")]
    row = {
        "prompt": "Tell a joke",
        "chosen": [*history, assistant("Knock knock.")],
        "rejected": [*history, assistant("No.")],
    }
    assert conv("preference", "preference", row) == {"prompt": history, "chosen": "Knock knock.", "rejected": "No."}


def test_preference_message_lists_with_different_conversations_are_invalid():
    row = {
        "prompt": "Q",
        "chosen": [user("Q one"), assistant("A")],
        "rejected": [user("Q two"), assistant("B")],
    }
    with pytest.raises(InvalidRow, match="differ"):
        conv("preference", "preference", row)


def test_preference_chosen_equal_rejected_is_invalid():
    with pytest.raises(InvalidRow, match="identical"):
        conv("preference", "preference", {"prompt": "Q", "chosen": "same", "rejected": "same"})
    ufb = {"prompt": "Q", "chosen": [user("Q"), assistant("same")], "rejected": [user("Q"), assistant("same")]}
    with pytest.raises(InvalidRow, match="identical"):
        conv("preference", "preference", ufb)


def test_preference_empty_answer_is_invalid():
    with pytest.raises(InvalidRow, match="empty 'rejected'"):
        conv("preference", "preference", {"prompt": "Q", "chosen": "A", "rejected": "  "})


# ---------------------------------------------------------------------------------------------------- hh_rlhf
HH_SINGLE = {
    "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
    "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I don't know.",
}
HH_MULTI_PREFIX = (
    "\n\nHuman: I want to bake bread.\n\nAssistant: Great, what kind?\n\nHuman: Sourdough, please."
    "\n\nAssistant: Do you have a starter?\n\nHuman: No, what is that?"
)
HH_MULTI = {
    "chosen": HH_MULTI_PREFIX + "\n\nAssistant: A starter is a culture of wild yeast.",
    "rejected": HH_MULTI_PREFIX + "\n\nAssistant: Go buy bread instead.",
}


def test_hh_single_turn_all_kinds():
    prompt = [user("What is the capital of France?")]
    assert conv("hh_rlhf", "preference", HH_SINGLE) == {
        "prompt": prompt,
        "chosen": "Paris.",
        "rejected": "I don't know.",
    }
    assert conv("hh_rlhf", "sft", HH_SINGLE) == {"prompt": prompt, "completion": "Paris."}
    assert conv("hh_rlhf", "prompt", HH_SINGLE) == {"prompt": prompt}


def test_hh_multi_turn_prefix_becomes_alternating_messages_ending_with_user():
    out = conv("hh_rlhf", "preference", HH_MULTI)
    assert out["prompt"] == [
        user("I want to bake bread."),
        assistant("Great, what kind?"),
        user("Sourdough, please."),
        assistant("Do you have a starter?"),
        user("No, what is that?"),
    ]
    roles = [m["role"] for m in out["prompt"]]
    assert roles == ["user", "assistant"] * 2 + ["user"]
    assert out["chosen"] == "A starter is a culture of wild yeast."
    assert out["rejected"] == "Go buy bread instead."
    assert conv("hh_rlhf", "prompt", HH_MULTI)["prompt"] == out["prompt"]
    assert conv("hh_rlhf", "sft", HH_MULTI)["completion"] == "A starter is a culture of wild yeast."


def test_hh_empty_final_assistant_turn_is_invalid():
    row = {**HH_SINGLE, "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant:"}
    with pytest.raises(InvalidRow, match="empty final Assistant turn"):
        conv("hh_rlhf", "preference", row)
    row = {**HH_SINGLE, "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant:   "}
    with pytest.raises(InvalidRow, match="empty final Assistant turn in HH 'rejected'"):
        conv("hh_rlhf", "preference", row)


def test_hh_mismatching_prefixes_are_invalid():
    row = {**HH_SINGLE, "rejected": "\n\nHuman: What is the capital of Spain?\n\nAssistant: Madrid."}
    with pytest.raises(InvalidRow, match="do not share"):
        conv("hh_rlhf", "preference", row)
    with pytest.raises(InvalidRow, match="do not share"):
        conv("hh_rlhf", "sft", row)


def test_hh_transcript_not_ending_with_assistant_or_not_a_transcript_is_invalid():
    row = {**HH_SINGLE, "chosen": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: more?"}
    with pytest.raises(InvalidRow, match="does not end with an Assistant turn"):
        conv("hh_rlhf", "preference", row)
    with pytest.raises(InvalidRow, match="not an HH transcript"):
        conv("hh_rlhf", "preference", {"chosen": "just text", "rejected": "other text"})


def test_hh_identical_transcripts_are_invalid_for_preference():
    with pytest.raises(InvalidRow, match="identical"):
        conv("hh_rlhf", "preference", {"chosen": HH_SINGLE["chosen"], "rejected": HH_SINGLE["chosen"]})


def test_parse_hh_transcript_strips_role_marker_space():
    assert schemas.parse_hh_transcript("\n\nHuman:  hi there \n\nAssistant: hello\n\nHuman: bye") == [
        user("hi there"),
        assistant("hello"),
        user("bye"),
    ]


def test_hh_implicit_prompt_message_list_variant():
    history = [user("Hi"), assistant("Hello!"), user("Recommend a book.")]
    row = {"chosen": [*history, assistant("Dune.")], "rejected": [*history, assistant("No.")]}
    assert detect_schema(list(row), "preference").name == "hh_rlhf"
    assert conv("hh_rlhf", "preference", row) == {"prompt": history, "chosen": "Dune.", "rejected": "No."}
    assert conv("hh_rlhf", "sft", row) == {"prompt": history, "completion": "Dune."}
    assert conv("hh_rlhf", "prompt", row) == {"prompt": history}
    different = {"chosen": [user("A?"), assistant("x")], "rejected": [user("B?"), assistant("y")]}
    with pytest.raises(InvalidRow, match="do not share"):
        conv("hh_rlhf", "preference", different)


# --------------------------------------------------------------------------------------------------- messages
def test_messages_sft_splits_at_last_assistant():
    row = {"messages": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4")]}
    assert conv("messages", "sft", row) == {
        "prompt": [user("Hi"), assistant("Hello!"), user("2+2?")],
        "completion": "4",
    }


def test_messages_prompt_drops_trailing_assistant():
    row = {"messages": [{"role": "system", "content": "Be brief."}, user("2+2?"), assistant("4")]}
    assert conv("messages", "prompt", row) == {"prompt": [{"role": "system", "content": "Be brief."}, user("2+2?")]}
    assert conv("messages", "prompt", {"messages": [user("only a question")]}) == {"prompt": [user("only a question")]}


def test_messages_invalid_rows():
    with pytest.raises(InvalidRow, match="does not end with an assistant"):
        conv("messages", "sft", {"messages": [user("Hi")]})
    with pytest.raises(InvalidRow, match="no user message before"):
        conv("messages", "sft", {"messages": [assistant("Hi")]})
    with pytest.raises(InvalidRow, match="empty message content"):
        conv("messages", "sft", {"messages": [user(""), assistant("x")]})
    with pytest.raises(InvalidRow, match="not a non-empty list"):
        conv("messages", "sft", {"messages": []})


def test_messages_has_no_preference_kind():
    with pytest.raises(UserError, match="no preference data"):
        detect_schema(["messages"], "preference")


# ----------------------------------------------------------------------------------------------------- alpaca
def test_alpaca_input_appended_after_blank_line():
    row = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert conv("alpaca", "sft", row) == {
        "prompt": [user("Translate to French.\n\nGood morning")],
        "completion": "Bonjour",
    }
    assert conv("alpaca", "prompt", row) == {"prompt": [user("Translate to French.\n\nGood morning")]}


@pytest.mark.parametrize("extra", ["", "   ", None])
def test_alpaca_empty_input_omitted(extra):
    row = {"instruction": "Name a color.", "input": extra, "output": "Blue"}
    assert conv("alpaca", "sft", row) == {"prompt": [user("Name a color.")], "completion": "Blue"}
    no_input = {"instruction": "Name a color.", "output": "Blue"}
    assert conv("alpaca", "sft", no_input) == {"prompt": [user("Name a color.")], "completion": "Blue"}


# ------------------------------------------------------------------------------------ prompt_response & friends
def test_prompt_response():
    row = {"prompt": "Capital of Italy?", "response": "Rome."}
    assert detect_schema(list(row), "sft").name == "prompt_response"
    assert conv("prompt_response", "sft", row) == {"prompt": [user("Capital of Italy?")], "completion": "Rome."}
    assert conv("prompt_response", "prompt", row) == {"prompt": [user("Capital of Italy?")]}
    messages_prompt = {"prompt": [user("Hi"), assistant("Hey"), user("Capital of Italy?")], "response": "Rome."}
    assert conv("prompt_response", "sft", messages_prompt)["prompt"] == messages_prompt["prompt"]


def test_prompt_chosen():
    row = {"prompt": "Capital of Italy?", "chosen": "Rome."}
    assert detect_schema(list(row), "sft").name == "prompt_chosen"
    assert conv("prompt_chosen", "sft", row) == {"prompt": [user("Capital of Italy?")], "completion": "Rome."}
    assert conv("prompt_chosen", "prompt", row) == {"prompt": [user("Capital of Italy?")]}
    as_messages = {"prompt": "Capital of Italy?", "chosen": [user("Capital of Italy?"), assistant("Rome.")]}
    assert conv("prompt_chosen", "sft", as_messages)["completion"] == "Rome."


def test_query():
    assert conv("query", "prompt", {"query": "Write a poem."}) == {"prompt": [user("Write a poem.")]}
    with pytest.raises(InvalidRow, match="empty 'query'"):
        conv("query", "prompt", {"query": ""})


def test_prompt_only():
    assert conv("prompt_only", "prompt", {"prompt": "Write a poem."}) == {"prompt": [user("Write a poem.")]}
    chat = [user("Hi"), assistant("Hello"), user("Write a poem."), assistant("Roses...")]
    assert conv("prompt_only", "prompt", {"prompt": chat}) == {"prompt": chat[:3]}
    with pytest.raises(InvalidRow, match="has no user message"):
        conv("prompt_only", "prompt", {"prompt": [assistant("Hello")]})


# -------------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    ("columns", "kind", "expected"),
    [
        (["question", "response_j", "response_k", "gold_j", "gold_k"], "preference", "stack_exchange"),
        (["question", "response_j", "response_k"], "sft", "stack_exchange"),
        (["history", "human_ref_A", "human_ref_B", "labels", "score_A"], "preference", "shp"),
        (["prompt", "chosen", "rejected"], "preference", "preference"),
        (["prompt", "prompt_id", "chosen", "rejected", "messages"], "sft", "preference"),
        (["chosen", "rejected"], "preference", "hh_rlhf"),
        (["messages"], "sft", "messages"),
        (["instruction", "input", "output"], "sft", "alpaca"),
        (["instruction", "output"], "prompt", "alpaca"),
        (["prompt", "response"], "sft", "prompt_response"),
        (["prompt", "chosen"], "sft", "prompt_chosen"),
        (["query"], "prompt", "query"),
        (["prompt"], "prompt", "prompt_only"),
        # prompt/response has no preference, but prompt-only data still serves the prompt kind
        (["prompt", "response"], "prompt", "prompt_response"),
    ],
)
def test_detect_schema(columns, kind, expected):
    assert detect_schema(columns, kind).name == expected


def test_every_schema_is_detected_from_its_required_columns():
    for schema in schemas.SCHEMAS:
        for kind in schemas.KINDS:
            if kind != "unpaired" and schema.reads(kind):  # unpaired: a label column decides (test_kto.py)
                assert detect_schema(schema.required, kind).name == schema.name, (schema.name, kind)


def test_unknown_columns_list_found_and_accepted():
    with pytest.raises(UserError) as info:
        detect_schema(["body", "score"], "sft", source="my.jsonl")
    message = str(info.value)
    assert "my.jsonl" in message
    assert "[body, score]" in message
    assert "match no known schema" in message
    for schema in ("question / response_j / response_k", "instruction / input / output", "messages"):
        assert schema in message
    assert "query" not in message  # query has no sft data: not listed as accepted for sft


def test_schema_lacking_kind_names_the_kind():
    with pytest.raises(UserError) as info:
        detect_schema(["instruction", "input", "output"], "preference")
    message = str(info.value)
    assert "alpaca" in message and "no preference data" in message and "preference needs one of" in message
    assert "prompt / chosen / rejected" in message

    with pytest.raises(UserError) as info:
        detect_schema(["query"], "sft")
    assert "query" in str(info.value) and "no sft data" in str(info.value)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        detect_schema(["prompt"], "ranking")


# -------------------------------------------------------------------------------------------------- rendering
def test_plain_format_single_turn_is_exact():
    assert messages_to_text([user("What is 2+2?")]) == "Question: What is 2+2?\n\nAnswer: "


def test_plain_format_multi_turn_alternates_question_answer_blocks():
    text = messages_to_text([user("Hi"), assistant("Hello!"), user("2+2?")])
    assert text == "Question: Hi\n\nAnswer: Hello!\n\nQuestion: 2+2?\n\nAnswer: "


def test_plain_format_system_message_leads():
    text = messages_to_text([{"role": "system", "content": "Be brief."}, user("2+2?")])
    assert text == "Be brief.\n\nQuestion: 2+2?\n\nAnswer: "


def test_render_row_plain():
    # the joined prompt + answer is optimum-habana's text exactly; the prompt ends on a token boundary ("Answer:"),
    # the space of "Answer: " leading each answer instead (see render_row's docstring)
    row = {"prompt": [user("Q?")], "chosen": "good", "rejected": "bad"}
    out = render_row(row, "preference", conversational=False)
    assert out == {"prompt": "Question: Q?\n\nAnswer:", "chosen": " good", "rejected": " bad"}
    assert out["prompt"] + out["chosen"] == "Question: Q?\n\nAnswer: good"
    assert out["prompt"] + out["rejected"] == "Question: Q?\n\nAnswer: bad"
    sft = render_row({"prompt": [user("Q?")], "completion": "A"}, "sft", conversational=False)
    assert sft == {"prompt": "Question: Q?\n\nAnswer:", "completion": " A"}
    assert render_row({"prompt": [user("Q?")]}, "prompt", conversational=False) == {"prompt": "Question: Q?\n\nAnswer:"}


def test_render_row_plain_multi_turn():
    prompt = [user("Hi"), assistant("Hello!"), user("2+2?")]
    out = render_row({"prompt": prompt, "completion": "4"}, "sft", conversational=False)
    assert out["prompt"] + out["completion"] == "Question: Hi\n\nAnswer: Hello!\n\nQuestion: 2+2?\n\nAnswer: 4"
    assert out["prompt"] + out["completion"] == messages_to_text(prompt) + "4"
    assert not out["prompt"].endswith(" ")


def test_render_row_conversational_wraps_answers():
    prompt = [user("Hi"), assistant("Hello"), user("Q?")]
    row = {"prompt": prompt, "chosen": "good", "rejected": "bad"}
    assert render_row(row, "preference", conversational=True) == {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert render_row({"prompt": prompt, "completion": "A"}, "sft", conversational=True) == {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": "A"}],
    }
    assert render_row({"prompt": prompt}, "prompt", conversational=True) == {"prompt": prompt}


def test_has_chat_template():
    class Tok:
        chat_template = None

    assert schemas.has_chat_template(Tok()) is False
    Tok.chat_template = "{{ messages }}"
    assert schemas.has_chat_template(Tok()) is True
    assert schemas.has_chat_template(object()) is False
