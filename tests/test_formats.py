"""Data in the formats users have: ShareGPT (LLaMA-Factory, FastChat), content parts, TRL's prompt-completion and
language-modeling types, LLaMA-Factory's Alpaca with system/history, KTO labels, and what is refused (images).
Tool calls have their own module (test_tool_calls.py), KTO too (test_kto.py). Real rows from ../shared/fixtures/data where they exist, hand-written rows otherwise; the
scripts train two steps on each format that applies to them.
"""

from __future__ import annotations

import json
import logging

import pytest
from conftest import REPO, assert_user_error, fixture_path, run_script

from rlhfkit import data, models, schemas
from rlhfkit.errors import UserError

STORIES = ("models", "stories260K")
TWO_STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--disable_tqdm",
             "True", "--report_to", "none", "--bf16", "False", "--max_length", "256"]


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def load(path, kind, caplog):
    """Canonical rows, with the warnings captured in ``caplog``."""
    with caplog.at_level(logging.WARNING):
        return data.load_canonical(str(path), kind)


# ------------------------------------------------------------------------------------------- real fixtures
def test_llamafactory_sharegpt_pairs(caplog):
    path = fixture_path("data", "llamafactory-dpo_en_demo.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows = load(path, "preference", caplog)
    assert len(rows) == len(raw) == 300
    first = rows[0]
    assert first["prompt"] == [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                               for t in raw[0]["conversations"]]
    assert first["chosen"] == raw[0]["chosen"]["value"] and first["rejected"] == raw[0]["rejected"]["value"]
    assert "HH" not in caplog.text and "dropped" not in caplog.text
    assert schemas.detect_schema(list(raw[0]), "preference").name == "sharegpt_pair"


def test_kto_labels_keep_the_wanted_answers_for_sft(caplog):
    path = fixture_path("data", "llamafactory-kto_en_demo.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    wanted = [r for r in raw if r["label"]]
    rows = load(path, "sft", caplog)
    assert len(rows) == len(wanted) == 150
    assert rows[0]["completion"] == wanted[0]["messages"][-1]["content"]
    assert "skipped 150 label: false" in caplog.text
    caplog.clear()
    prompts = load(path, "prompt", caplog)  # PPO prompts: every row, the label named as not read
    assert len(prompts) == 300 and "ignored columns (the messages schema does not read them): label" in caplog.text


def test_images_are_refused_in_one_line():
    path = fixture_path("data", "llamafactory-mllm_demo.json")
    with pytest.raises(UserError, match="'images' column: this toolkit trains text-only models"):
        data.load_canonical(str(path), "sft")


@pytest.mark.slow
def test_sft_refuses_images_without_a_traceback(tmp_path):
    path = fixture_path("data", "llamafactory-mllm_demo.json")
    result = run_script(str(REPO / "sft.py"), "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name",
                        str(path), "--output_dir", str(tmp_path / "out"), *TWO_STEPS)
    assert_user_error(result, "text-only models")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ hand-written rows
def test_content_parts_are_joined_and_non_text_parts_refused(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "你好，"}, {"type": "text", "text": "世界"}]},
                          {"role": "assistant", "content": [{"type": "text", "value": "Hello, world."}]}]}]
    canonical = data.load_canonical(str(write_json(tmp_path / "parts.json", rows)), "sft")
    assert canonical[0]["prompt"] == [{"role": "user", "content": "你好，世界"}]
    assert canonical[0]["completion"] == "Hello, world."
    image = [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                        {"type": "text", "text": "What is it?"}]},
                           {"role": "assistant", "content": "A cat."}]}]
    with pytest.raises(UserError, match="holds a image_url part: this toolkit trains text-only models"):
        data.load_canonical(str(write_json(tmp_path / "image.json", image)), "sft")


def test_fastchat_sharegpt_with_a_system_column(tmp_path, caplog):
    rows = [{"id": "a1", "system": "You are terse.",
             "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                               {"from": "human", "value": "天气如何？"}, {"from": "gpt", "value": "晴天。"}]}]
    canonical = load(write_json(tmp_path / "sharegpt.json", rows), "sft", caplog)
    assert canonical[0]["prompt"] == [{"role": "system", "content": "You are terse."},
                                      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                      {"role": "user", "content": "天气如何？"}]
    assert canonical[0]["completion"] == "晴天。"
    assert "ignored columns" not in caplog.text


def test_alpaca_system_and_history_become_turns(tmp_path):
    rows = [{"instruction": "And in French?", "input": "", "output": "Bonjour.", "system": "Translate.",
             "history": [["Say hello in Spanish.", "Hola."]]}]
    canonical = data.load_canonical(str(write_json(tmp_path / "alpaca.json", rows)), "sft")
    assert canonical[0]["prompt"] == [{"role": "system", "content": "Translate."},
                                      {"role": "user", "content": "Say hello in Spanish."},
                                      {"role": "assistant", "content": "Hola."},
                                      {"role": "user", "content": "And in French?"}]


def test_trl_prompt_completion_and_language_modeling(tmp_path):
    standard = [{"prompt": "The sky is", "completion": " blue."}]
    conversational = [{"prompt": [{"role": "user", "content": "What color is the sky?"}],
                       "completion": [{"role": "assistant", "content": "It is blue."}]}]
    text = [{"text": "Once upon a time there was a cat."}]
    assert data.load_canonical(str(write_json(tmp_path / "s.json", standard)), "sft")[0] == {
        "prompt": [{"role": "user", "content": "The sky is"}], "completion": " blue."}
    assert data.load_canonical(str(write_json(tmp_path / "c.json", conversational)), "sft")[0]["completion"] == "It is blue."
    lm = data.load_canonical(str(write_json(tmp_path / "t.json", text)), "sft")
    assert lm[0] == {"prompt": [], "completion": text[0]["text"]}
    assert schemas.render_row(lm[0], "sft", conversational=True) == {"prompt": "", "completion": text[0]["text"]}


def test_unused_columns_are_named(tmp_path, caplog):
    rows = [{"question": "q", "response_j": "good", "response_k": "bad", "qid": 1, "date": "2020"}]
    load(write_json(tmp_path / "se.json", rows), "preference", caplog)
    assert "ignored columns (the stack_exchange schema does not read them): qid, date" in caplog.text


def test_a_single_message_pair_is_not_an_hh_transcript(tmp_path, caplog):
    rows = [{"chosen": {"role": "assistant", "content": "a"}, "rejected": {"role": "assistant", "content": "b"}}]
    with pytest.raises(UserError, match="single message"):
        load(write_json(tmp_path / "pair.json", rows), "preference", caplog)


# --------------------------------------------------------------------------------------- the scripts train
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["sharegpt_pair", "kto_labels", "prompt_completion", "text"])
def test_sft_trains_two_steps(fmt, tmp_path):
    if fmt == "sharegpt_pair":
        path = fixture_path("data", "llamafactory-dpo_en_demo.json")
    elif fmt == "kto_labels":
        path = fixture_path("data", "llamafactory-kto_en_demo.json")
    elif fmt == "prompt_completion":
        path = write_json(tmp_path / "pc.json", [{"prompt": f"Tell story {i}.", "completion": " Once upon a time."}
                                                  for i in range(8)])
    else:
        path = write_json(tmp_path / "lm.json", [{"text": f"Once upon a time, a cat named {i} sat."} for i in range(8)])
    out = tmp_path / "out"
    result = run_script(str(REPO / "sft.py"), "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name",
                        str(path), "--output_dir", str(out), "--do_train", *TWO_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("train_loss" in h for h in history) and history[-1]["step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("script", ["dpo.py", "reward_modeling.py"])
def test_pair_scripts_train_two_steps_on_sharegpt_pairs(script, tmp_path):
    """ShareGPT pairs as LLaMA-Factory writes them (short hand-written rows: the demo file's conversations are
    longer than stories260K's 512-token context)."""
    rows = [{"conversations": [{"from": "human", "value": f"Tell me about cat {i}."}],
             "chosen": {"from": "gpt", "value": f"Cat {i} is happy and 快乐."},
             "rejected": {"from": "gpt", "value": f"Cat {i} is sad."}} for i in range(24)]
    out = tmp_path / "out"
    result = run_script(str(REPO / script), "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name",
                        str(write_json(tmp_path / "pairs.json", rows)), "--output_dir", str(out),
                        "--eval_subset", "4", *TWO_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())["train_runtime"] > 0


def test_readme_schema_table_matches_detection_order():
    """Every example row in the README's data table is read by the schema listed on its line, in that order."""
    import re

    names = {"stack-exchange-paired": "stack_exchange", "Stanford SHP": "shp", "ShareGPT pairs": "sharegpt_pair",
             "preference, explicit": "preference", "preference, implicit": "hh_rlhf", "ShareGPT (": "sharegpt",
             "chat (": "messages", "Alpaca": "alpaca", "prompt-completion": "prompt_completion",
             "prompt/response": "prompt_response", "prompt/chosen": "prompt_chosen", "language modeling": "text",
             "query": "query", "prompt only": "prompt_only"}
    kinds = {"SFT": "sft", "pairs": "preference", "prompts": "prompt", "unpaired": "unpaired"}
    found = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\d+) \| ([^|]+) \|.*\| `(\{.*\})` \| ([^|]+) \|$", line)
        if not match:
            continue
        row = json.loads(match.group(3).replace("\\\\", "\\"))
        expected = next(v for k, v in names.items() if match.group(2).startswith(k))
        for kind in (kinds[k.strip()] for k in match.group(4).split(",")):
            assert schemas.detect_schema(list(row), kind).name == expected, (line, kind)
            if kind != "unpaired":
                schemas.convert_row(schemas.SCHEMA_BY_NAME[expected], kind, row)  # a valid row
        found.append(expected)
    assert found == [s.name for s in schemas.SCHEMAS]  # every schema, in detection order


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sft.py", "reward_modeling.py", "dpo.py"])
def test_a_tokenizer_larger_than_the_embedding_is_refused_before_training(script, tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": "good", "rejected": "bad"} for i in range(8)]
    out = tmp_path / "out"
    result = run_script(str(REPO / script), "--model_name_or_path", str(fixture_path(*STORIES)),
                        "--tokenizer_name_or_path", str(fixture_path("tokenizers", "gpt2")), "--dataset_name",
                        str(write_json(tmp_path / "pairs.json", rows)), "--output_dir", str(out), *TWO_STEPS,
                        *(["--do_train"] if script == "sft.py" else []))
    assert_user_error(result, "has 50257 tokens but the model", "has 512 token embeddings", "--tokenizer_name_or_path")
    assert not out.exists()


@pytest.mark.slow
def test_loading_a_reward_adapter_shows_no_false_missing_head_report(tmp_path):
    """A reward adapter's base has no score head (the adapter brings the trained one): transformers' "score.weight
    MISSING, newly initialized" report would be false, and the renamed-flag FutureWarnings are noise."""
    from peft import LoraConfig, get_peft_model

    stories = str(fixture_path(*STORIES))
    adapter = get_peft_model(models.load_sequence_classifier(stories),
                             LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path / "rm")
    code = ("from rlhfkit import cli, models; cli.setup_logging(); "
            f"models.load_sequence_classifier({str(tmp_path / 'rm')!r})")
    result = run_script("-c", code, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING" not in result.stderr and "FutureWarning" not in result.stderr, result.stderr
    assert "adapter and its trained score head loaded onto" in result.stderr


def test_subsets_count_pairs_that_fit_max_length(tmp_path):
    """--train_subset / --eval_subset count the pairs that survive the length filter, not the rows read."""
    from rlhfkit.pairs import PairDataArguments, load_pairs

    tokenizer = models.load_tokenizer(str(fixture_path(*STORIES)))
    long = " ".join(["a very long answer that goes on"] * 20)
    rows = [{"prompt": f"Q{i}", "chosen": long if i % 3 else "good", "rejected": "bad"} for i in range(90)]
    path = write_json(tmp_path / "pairs.json", rows)
    args = PairDataArguments(dataset_name=str(path), train_subset=8, eval_subset=2)
    train, evaluation = load_pairs(args, seed=0, tokenizer=tokenizer, max_length=32)
    assert len(train) == 8 and len(evaluation) == 2  # a third of the rows fit: 30 rows read would give 3
    assert all(row["chosen"].strip() == "good" for row in [*train, *evaluation])


# ------------------------------------------------------------------------ every format, every script that applies
def _q(i: int) -> str:
    return f"Tell me about cat {i}." if i % 2 else f"讲一个关于猫 {i} 的故事。"


def _turns(i: int, answer: str, sharegpt: bool = False) -> list[dict]:
    msgs = [{"role": "user", "content": _q(i)}, {"role": "assistant", "content": answer}]
    return [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in msgs] \
        if sharegpt else msgs


N = 6
# format name -> (the schema it is read as, the kinds it gives, its rows): short hand-written rows, Chinese included
FORMATS = {
    "stack_exchange": ("stack_exchange", ("sft", "preference", "prompt"),
                       [{"question": _q(i), "response_j": "A happy cat.", "response_k": "A sad cat."} for i in range(N)]),
    "shp": ("shp", ("sft", "preference", "prompt"),
            [{"history": _q(i), "human_ref_A": "Good cat.", "human_ref_B": "Bad cat.", "labels": i % 2}
             for i in range(N)]),
    "sharegpt_pair": ("sharegpt_pair", ("sft", "preference", "prompt"),
                      [{"conversations": [{"from": "human", "value": _q(i)}], "chosen": {"from": "gpt", "value": "Yes."},
                        "rejected": {"from": "gpt", "value": "No."}} for i in range(N)]),
    "preference_text": ("preference", ("sft", "preference", "prompt"),
                        [{"prompt": _q(i), "chosen": "Kind words.", "rejected": "Rude words."} for i in range(N)]),
    "preference_chat": ("preference", ("sft", "preference", "prompt"),
                        [{"prompt": _q(i), "chosen": _turns(i, "Kind."), "rejected": _turns(i, "Rude.")}
                         for i in range(N)]),
    "hh_transcripts": ("hh_rlhf", ("sft", "preference", "prompt"),
                       [{"chosen": f"\n\nHuman: {_q(i)}\n\nAssistant: Sure.",
                         "rejected": f"\n\nHuman: {_q(i)}\n\nAssistant: No."} for i in range(N)]),
    "implicit_prompt_chat": ("hh_rlhf", ("sft", "preference", "prompt"),
                             [{"chosen": _turns(i, "Sure."), "rejected": _turns(i, "No.")} for i in range(N)]),
    "sharegpt_tools": ("sharegpt", ("sft", "prompt"),
                       [{"conversations": [{"from": "human", "value": _q(i)},
                                           {"from": "function_call", "value": '{"name": "find", "arguments": {}}'},
                                           {"from": "observation", "value": "a cat"},
                                           {"from": "gpt", "value": "Here is a cat."}],
                         "system": "Be kind.", "tools": '[{"name": "find"}]'} for i in range(N)]),
    "messages_label": ("messages", ("sft", "prompt", "unpaired"),
                       [{"messages": _turns(i, "A fine cat."), "label": bool(i % 2)} for i in range(N)]),
    "alpaca": ("alpaca", ("sft", "prompt"),
               [{"instruction": _q(i), "input": "", "output": "A cat.", "system": "Be brief.",
                 "history": [["Hi", "Hello."]]} for i in range(N)]),
    "prompt_completion_label": ("prompt_completion", ("sft", "prompt", "unpaired"),
                                [{"prompt": _q(i), "completion": " A cat.", "label": bool(i % 2)} for i in range(N)]),
    "prompt_response": ("prompt_response", ("sft", "prompt"),
                        [{"prompt": _q(i), "response": "A cat."} for i in range(N)]),
    "prompt_chosen": ("prompt_chosen", ("sft", "prompt"), [{"prompt": _q(i), "chosen": "A cat."} for i in range(N)]),
    "text": ("text", ("sft",), [{"text": f"Once upon a time there was cat {i}."} for i in range(N)]),
    "query": ("query", ("prompt",), [{"query": _q(i)} for i in range(N)]),
    "prompt_only": ("prompt_only", ("prompt",), [{"prompt": _q(i)} for i in range(N)]),
}


def _mixture(tmp_path, kind: str) -> str:
    """Every format that gives ``kind``, one file each, joined by commas as --dataset_name takes a mixture."""
    paths = [str(write_json(tmp_path / f"{name}.json", rows)) for name, (_, kinds, rows) in FORMATS.items()
             if kind in kinds]
    return ",".join(paths)


def test_the_format_files_cover_every_schema():
    for name, (schema, kinds, rows) in FORMATS.items():
        for kind in kinds:
            assert schemas.detect_schema(list(rows[0]), kind).name == schema, (name, kind)
    assert {schema for schema, _, _ in FORMATS.values()} == {s.name for s in schemas.SCHEMAS}


@pytest.mark.slow
@pytest.mark.parametrize(("script", "kind"), [("sft.py", "sft"), ("reward_modeling.py", "preference"),
                                              ("dpo.py", "preference"), ("kto.py", "unpaired"), ("ppo.py", "prompt")])
def test_each_script_trains_two_steps_on_every_format_it_takes(script, kind, tmp_path):
    """One run per script over a mixture of every format it takes (each file normalised on its own, then mixed):
    it trains two steps, and the log names every file's schema."""
    mixture = _mixture(tmp_path, kind)
    out = tmp_path / "out"
    if script == "ppo.py":
        rule = tmp_path / "rule.py"
        rule.write_text("def reward(prompt, response):\n    return float('cat' in response)\n", encoding="utf-8")
        flags = ["--reward_function", f"{rule}:reward", "--steps", "2", "--batch_size", "8", "--mini_batch_size", "4",
                 "--output_max_length", "8", "--report_to", "none", "--sample_every", "0"]
    else:
        flags = [*TWO_STEPS, *(["--do_train"] if script == "sft.py" else ["--eval_subset", "8"])]
    result = run_script(str(REPO / script), "--model_name_or_path", str(fixture_path(*STORIES)), "--dataset_name",
                        mixture, "--output_dir", str(out), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (schema, kinds, rows) in FORMATS.items():
        if kind in kinds:
            assert f"{name}.json: {len(rows)} rows, schema {schema} -> {kind}" in result.stderr, name
    assert "dropped" not in result.stderr, result.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert (results["train_episodes"] == 16) if script == "ppo.py" else results["train_runtime"] > 0


@pytest.mark.slow
def test_inspect_data_shows_schemas_drops_ignored_columns_labels_roles_and_tokens(tmp_path):
    glaive, kto = fixture_path("data", "llamafactory-glaive_toolcall_en_demo.json"), fixture_path(
        "data", "llamafactory-kto_en_demo.json")
    extra = write_json(tmp_path / "extra.json", [{"prompt": "Hi", "completion": "Hello", "note": "x"},
                                                 {"prompt": "Hi", "completion": ""}])
    result = run_script("-m", "rlhfkit.inspect_data", "--dataset_name", f"{glaive},{kto},{extra}", "--num_examples",
                        "1", "--tokenizer", str(fixture_path(*STORIES)))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    first, second, third = summary["sources"]
    assert (first["schema"], first["rows_read"], first["rows_kept"]) == ("sharegpt", 300, 300)
    assert second["schema"] == "messages" and second["labels"] == {"true": 150, "false": 150}
    assert third["ignored_columns"] == ["note"] and third["dropped"] == {"empty 'completion'": 1}
    assert summary["rows"] == 300 + 150 + 1
    assert summary["prompt_roles"]["tool_call"] > 0 and summary["prompt_roles"]["tool"] > 0
    tokens = summary["tokens"][0]
    tokenizer_ids = models.load_tokenizer(str(fixture_path(*STORIES)))(summary["examples"][0]["prompt"])["input_ids"]
    assert tokens["prompt"] == len(tokenizer_ids) and tokens["completion"] > 0
