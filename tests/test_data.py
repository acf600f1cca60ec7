"""Tests of rlhfkit/data.py: loading every local format, splits, subsets, mixing, real fixtures, bad input."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import shutil

import pytest
from conftest import assert_user_error, fixture_path, run_script

from rlhfkit import data, toy
from rlhfkit.errors import UserError

HH = ("data", "hh-rlhf-harmless-base-test-first1500.jsonl.gz")
ALPACA = ("data", "llamafactory-alpaca_en_demo.json")

SE_ROWS = [
    {"question": f"Question number {i}?", "response_j": f"Good answer {i}.", "response_k": f"Bad answer {i}."}
    for i in range(5)
]
ALPACA_ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a fruit.", "input": "", "output": "Apple"},
    {"instruction": "Name a colour.", "input": "", "output": "Red"},
]


def user(text):
    return {"role": "user", "content": text}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_parquet(path, rows):
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def expected_se_preference(rows):
    return [{"prompt": [user(r["question"])], "chosen": r["response_j"], "rejected": r["response_k"]} for r in rows]


# ------------------------------------------------------------------------------------------- file formats
def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.mark.parametrize(
    ("filename", "writer"),
    [
        ("rows.json", write_json),
        ("rows.jsonl", write_jsonl),
        ("rows.jsonl.gz", _write_jsonl_gz),
        ("rows.parquet", write_parquet),
        ("rows.csv", write_csv),
    ],
)
def test_load_each_file_format(tmp_path, filename, writer):
    path = writer(tmp_path / filename, SE_ROWS)
    rows = data.load_canonical(str(path), "preference")
    assert len(rows) == len(SE_ROWS)
    assert rows.column_names == ["prompt", "chosen", "rejected"]
    assert list(rows) == expected_se_preference(SE_ROWS)


def test_load_save_to_disk_dataset_and_arrow_file(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(SE_ROWS).save_to_disk(str(folder))
    rows = data.load_canonical(str(folder), "sft")
    assert len(rows) == 5
    assert rows[2] == {"prompt": [user("Question number 2?")], "completion": "Good answer 2."}
    with pytest.raises(UserError, match="split 'test' not found"):
        data.load_raw(str(folder), split="test")

    # a bare .arrow file (as save_to_disk writes them), read as a file and as a folder of files
    arrow_files = sorted(folder.glob("*.arrow"))
    assert len(arrow_files) == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(arrow_files[0], plain / "train-00000-of-00001.arrow")
    assert list(data.load_canonical(str(plain / "train-00000-of-00001.arrow"), "preference")) == expected_se_preference(
        SE_ROWS
    )
    assert len(data.load_canonical(str(plain), "prompt")) == 5


def test_load_save_to_disk_dataset_dict_by_split(tmp_path):
    import datasets

    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(SE_ROWS), "test": datasets.Dataset.from_list(SE_ROWS[:2])}
    ).save_to_disk(str(folder))
    assert len(data.load_canonical(str(folder), "preference")) == 5
    assert len(data.load_canonical(str(folder), "preference", split="test")) == 2
    with pytest.raises(UserError) as info:
        data.load_raw(str(folder), split="validation")
    message = str(info.value)
    assert "split 'validation' not found" in message and "train" in message and "test" in message


# ------------------------------------------------------------------------------------------ folders & splits
def test_folder_with_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", SE_ROWS)
    write_jsonl(tmp_path / "test.jsonl", SE_ROWS[:3])
    assert len(data.load_canonical(str(tmp_path), "preference")) == 5
    test = data.load_canonical(str(tmp_path), "preference", split="test")
    assert list(test) == expected_se_preference(SE_ROWS[:3])


def test_missing_split_lists_the_splits_there(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", SE_ROWS)
    write_jsonl(tmp_path / "test.jsonl", SE_ROWS[:3])
    with pytest.raises(UserError) as info:
        data.load_canonical(str(tmp_path), "preference", split="validation")
    message = str(info.value)
    assert "split 'validation' not found" in message
    assert "splits there: test, train" in message


def test_single_file_has_only_train_split(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", SE_ROWS)
    with pytest.raises(UserError, match="only the split 'train'"):
        data.load_raw(str(path), split="test")


def test_hub_style_shard_names_give_split_names(tmp_path):
    write_parquet(tmp_path / "data" / "train_prefs-00000-of-00001.parquet", SE_ROWS)
    write_parquet(tmp_path / "data" / "test_prefs-00000-of-00001.parquet", SE_ROWS[:2])
    assert len(data.load_canonical(str(tmp_path), "preference", split="train_prefs")) == 5
    assert len(data.load_canonical(str(tmp_path), "preference", split="test_prefs")) == 2
    with pytest.raises(UserError, match="splits there: test_prefs, train_prefs"):
        data.load_canonical(str(tmp_path), "preference", split="train")


def test_folder_with_one_group_of_files_serves_it_as_train(tmp_path):
    write_jsonl(tmp_path / "shard-00000.jsonl", SE_ROWS[:2])
    write_jsonl(tmp_path / "shard-00001.jsonl", SE_ROWS[2:])
    rows = data.load_canonical(str(tmp_path), "preference")
    assert len(rows) == 5
    assert len(data.load_canonical(str(tmp_path), "preference", split="shard")) == 5


def test_subset_folders_as_in_the_seed(tmp_path):
    toy.write_dataset(str(tmp_path), seed=3, sizes={"finetune": 7, "reward": 6, "rl": 5, "evaluation": 4})
    assert len(data.load_canonical(str(tmp_path), "sft", subset="data/finetune")) == 7
    assert len(data.load_canonical(str(tmp_path), "preference", subset="data/reward")) == 6
    assert len(data.load_canonical(str(tmp_path), "prompt", subset="data/rl")) == 5
    evaluation = data.load_canonical(str(tmp_path), "preference", subset="data/evaluation")
    source = [json.loads(line) for line in (tmp_path / "data" / "evaluation" / "train.jsonl").read_text().splitlines()]
    assert list(evaluation) == expected_se_preference(source)
    with pytest.raises(UserError, match="--subset data/missing not found"):
        data.load_canonical(str(tmp_path), "sft", subset="data/missing")
    with pytest.raises(UserError, match="needs a folder"):
        data.load_canonical(str(tmp_path / "data" / "rl" / "train.jsonl"), "prompt", subset="data/rl")


def test_mixing_two_datasets_with_different_schemas(tmp_path):
    se = write_jsonl(tmp_path / "se.jsonl", SE_ROWS)
    alpaca = write_json(tmp_path / "alpaca.json", ALPACA_ROWS)
    mixed = data.load_canonical(f"{se}, {alpaca}", "sft")
    assert len(mixed) == len(SE_ROWS) + len(ALPACA_ROWS)
    assert mixed.column_names == ["prompt", "completion"]
    assert mixed[0] == {"prompt": [user("Question number 0?")], "completion": "Good answer 0."}
    assert mixed[len(SE_ROWS)] == {"prompt": [user("Add the numbers.\n\n2 and 3")], "completion": "5"}


def test_seed_001_query_json_list(tmp_path):
    queries = ["Write a review of the park.", "How was the movie?", "Describe the lamp."]
    path = write_json(tmp_path / "queries.json", [{"query": q} for q in queries])
    rows = data.load_canonical(str(path), "prompt")
    assert list(rows) == [{"prompt": [user(q)]} for q in queries]
    with pytest.raises(UserError, match="no sft data"):
        data.load_canonical(str(path), "sft")


def test_limit_stops_after_that_many_valid_rows(tmp_path):
    rows = [{**SE_ROWS[0], "question": ""}, *SE_ROWS]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    limited = data.load_canonical(str(path), "preference", limit=3)
    assert list(limited) == expected_se_preference(SE_ROWS[:3])


# ----------------------------------------------------------------------------------------------- real data
def test_real_hh_rlhf_loads_as_preference(caplog):
    path = fixture_path(*HH)
    raw = data.load_raw(str(path))
    assert len(raw) == 1500
    assert raw.column_names == ["chosen", "rejected"]
    caplog.set_level(logging.INFO, logger="rlhfkit.data")
    rows = data.load_canonical(str(path), "preference")
    # 4 rows have an empty final chosen turn, 1 (row 1254) has a chosen transcript that lost a "\n\n" before
    # "Human:", so its conversation differs from the rejected one
    assert len(rows) == 1495
    assert "schema hh_rlhf -> preference" in caplog.text
    assert "dropped 5 invalid row(s)" in caplog.text
    assert "empty final Assistant turn in HH 'chosen': 4" in caplog.text

    first = rows[0]  # a multi-turn conversation about pranks with a pen
    assert len(first["prompt"]) == 5
    assert first["prompt"][0] == user("what are some pranks with a pen i can do?")
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][-1] == user("okay some of these do not have anything to do with pens")
    assert isinstance(first["chosen"], str) and first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert isinstance(first["rejected"], str) and first["rejected"].startswith("There are lots of funny things")
    assert all(p[-1]["role"] == "user" for p in rows["prompt"])
    assert sum(len(p) > 1 for p in rows["prompt"]) > 1000


def test_real_hh_rlhf_strict_names_the_first_invalid_row():
    path = fixture_path(*HH)
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "preference", strict=True)
    message = str(info.value)
    assert "row 86:" in message and "empty final Assistant turn" in message
    assert "--error_on_invalid_rows" in message


def test_real_alpaca_loads_as_sft():
    path = fixture_path(*ALPACA)
    rows = data.load_canonical(str(path), "sft")
    assert len(rows) == 999
    assert rows[0]["prompt"] == [user("Describe a process of making crepes.")]
    assert rows[0]["completion"].startswith("Making crepes is an easy and delicious process!")
    # row 5 has a non-empty input: appended after a blank line
    assert rows[5]["prompt"] == [
        user("Given the parameters of a triangle, find out its perimeter.\n\nSide 1 = 4\nSide 2 = 6\nSide 3 = 8")
    ]
    with pytest.raises(UserError, match="alpaca schema .* no preference data"):
        data.load_canonical(str(path), "preference")


# --------------------------------------------------------------------------------------------- invalid rows
def _rows_with_invalid(tmp_path):
    rows = [
        SE_ROWS[0],
        {**SE_ROWS[1], "response_j": ""},
        SE_ROWS[2],
        {**SE_ROWS[3], "response_k": SE_ROWS[3]["response_j"]},
        {**SE_ROWS[4], "response_j": "   "},
    ]
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


def test_invalid_rows_dropped_with_a_count(tmp_path, caplog):
    path = _rows_with_invalid(tmp_path)
    caplog.set_level(logging.INFO, logger="rlhfkit.data")
    rows = data.load_canonical(str(path), "preference")
    assert list(rows) == expected_se_preference([SE_ROWS[0], SE_ROWS[2]])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 3 invalid row(s)" in warnings[0]
    assert "empty 'response_j': 2" in warnings[0]
    assert "chosen and rejected are identical: 1" in warnings[0]


def test_invalid_rows_strict_raises_naming_the_row(tmp_path):
    path = _rows_with_invalid(tmp_path)
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "preference", strict=True)
    message = str(info.value)
    assert str(path) in message and "row 1: empty 'response_j'" in message


def test_all_rows_invalid_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{**r, "question": ""} for r in SE_ROWS])
    with pytest.raises(UserError, match=r"no usable rows for sft \(5 dropped as invalid, most often: empty .question.\)"):
        data.load_canonical(str(path), "sft")


# ---------------------------------------------------------------------------------------------- bad input
def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in SE_ROWS[:3]] + ['{"question": "q", "response_j": oops}'] + [json.dumps(SE_ROWS[4])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "preference")
    message = str(info.value)
    assert f"malformed JSON in {path}, line 4:" in message


def test_malformed_jsonl_line_number_ignores_unicode_line_separators(tmp_path):
    # U+2028 is legal inside a JSON string; it must not count as a line break
    path = tmp_path / "broken.jsonl"
    good = json.dumps({**SE_ROWS[0], "question": "one\u2028two\x85three"}, ensure_ascii=False)
    path.write_text(good + "\n" + json.dumps(SE_ROWS[1]) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "preference")
    assert f"malformed JSON in {path}, line 3:" in str(info.value)


def test_malformed_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(
        '[\n  {"query": "a"},\n  {"query": "b"},\n  {"query": "c"}\n  {"query": "d"}\n]\n', encoding="utf-8"
    )
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "prompt")
    assert f"malformed JSON in {path}, line 5:" in str(info.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(SE_ROWS[0]) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2: expected a JSON object, found list"):
        data.load_canonical(str(path), "preference")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "blank.jsonl", "empty.jsonl.gz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".gz"):
        gzip.open(path, "wt").close()
    elif name.startswith("blank"):
        path.write_text("\n  \n", encoding="utf-8")
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError) as info:
        data.load_canonical(str(path), "sft")
    assert f"dataset file {path} is empty" in str(info.value)


def test_nonexistent_path(tmp_path):
    path = tmp_path / "nope" / "rows.jsonl"
    with pytest.raises(UserError, match=f"dataset path {path} does not exist"):
        data.load_canonical(str(path), "sft")
    with pytest.raises(UserError, match="does not exist"):
        data.load_canonical("./no-such-file.jsonl", "sft")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(UserError, match="is not a json, jsonl, parquet, csv or arrow file"):
        data.load_canonical(str(path), "sft")


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(UserError, match="no json, jsonl, parquet, csv or arrow files in"):
        data.load_canonical(str(tmp_path), "sft")


def test_hub_id_offline_says_it_is_not_a_local_path():
    with pytest.raises(UserError) as info:
        data.load_canonical("someone/surely-not-cached-dataset", "sft")
    message = str(info.value)
    assert "someone/surely-not-cached-dataset" in message
    assert "no local path has that name" in message


def test_empty_dataset_name():
    with pytest.raises(UserError, match="--dataset_name is empty"):
        data.load_canonical(" , ", "sft")


# ------------------------------------------------------------------------------------------ token lengths
@pytest.fixture(scope="module")
def tokenizer(embedded_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_root / "model"))


def _rendered(tmp_path, rows, tokenizer):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    return data.render(data.load_canonical(str(path), "sft"), "sft", tokenizer)


def test_filter_by_token_length_counts_tokens_not_characters(tmp_path, tokenizer):
    # in-vocabulary words: many characters, few tokens; random letters: few characters, many tokens
    wordy = {"instruction": "How was the bicycle?", "output": " ".join(["wonderful"] * 12)}
    gibberish = {"instruction": "zqxj vkzq", "output": "qzxv jqkz xqvz"}
    rendered = _rendered(tmp_path, [wordy, gibberish], tokenizer)
    texts = [r["prompt"] + r["completion"] for r in rendered]
    tokens = data.token_lengths(rendered, "sft", tokenizer)
    assert tokens == [len(tokenizer(t)["input_ids"]) for t in texts]
    chars = [len(t) for t in texts]
    assert chars[0] > chars[1] and tokens[0] < tokens[1]  # the two measures disagree

    limit = tokens[0]  # fits the wordy row by tokens, although its characters are the longer
    assert limit < chars[1] < chars[0]
    kept = data.filter_by_token_length(rendered, "sft", tokenizer, limit)
    assert len(kept) == 1
    assert kept[0]["completion"].strip() == wordy["output"]

    everything = data.filter_by_token_length(rendered, "sft", tokenizer, max(tokens))
    assert len(everything) == 2

    with pytest.raises(UserError) as info:
        data.filter_by_token_length(rendered, "sft", tokenizer, min(tokens) - 1, source="my-data")
    message = str(info.value)
    assert "shorter than every example" in message and "my-data" in message
    assert f"the shortest has {min(tokens)} tokens" in message


def test_token_lengths_with_a_chat_template(tmp_path, tokenizer):
    chat = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    chat.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    rows = [
        {"instruction": "How was the bicycle?", "output": "Great."},
        {"instruction": "How was the lamp?", "output": "The lamp is bright and lovely and charming."},
    ]
    rendered = _rendered(tmp_path, rows, chat)
    assert rendered[0]["completion"] == [{"role": "assistant", "content": "Great."}]
    lengths = data.token_lengths(rendered, "sft", chat)
    expected = [
        len(tokenizer(f"user: {r['instruction']}\nassistant: {r['output']}\n", add_special_tokens=False)["input_ids"])
        for r in rows
    ]
    assert lengths == expected
    assert lengths[0] < lengths[1]
    kept = data.filter_by_token_length(rendered, "sft", chat, lengths[0])
    assert [r["completion"][0]["content"] for r in kept] == ["Great."]


# -------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_unknown_schema(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"body": "a", "score": 1}])
    result = run_script("-m", "rlhfkit.inspect_data", "--dataset_name", str(path))
    assert_user_error(result, "[body, score]", "match no known schema")


@pytest.mark.slow
def test_cli_malformed_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(SE_ROWS[0]) + "\n" + json.dumps(SE_ROWS[1]) + '\n{"question": \n', encoding="utf-8")
    result = run_script("-m", "rlhfkit.inspect_data", "--dataset_name", str(path), "--kind", "preference")
    assert_user_error(result, "broken.jsonl", "line 3")


@pytest.mark.slow
def test_cli_missing_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", SE_ROWS)
    write_jsonl(tmp_path / "test.jsonl", SE_ROWS)
    result = run_script("-m", "rlhfkit.inspect_data", "--dataset_name", str(tmp_path), "--split", "dev")
    assert_user_error(result, "split 'dev' not found", "splits there: test, train")


@pytest.mark.slow
def test_cli_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = run_script("-m", "rlhfkit.inspect_data", "--dataset_name", str(path))
    assert_user_error(result, "empty.jsonl", "is empty")


@pytest.mark.slow
def test_cli_embedded_toy_default(embedded_root):
    result = run_script("-m", "rlhfkit.inspect_data", "--kind", "preference", "--num_examples", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "preference"
    assert summary["rows"] == toy.SPLITS["reward"]
    assert summary["subset"] == "data/reward"
    assert summary["dataset"] == str(embedded_root)
    assert len(summary["examples"]) == 1
    assert set(summary["examples"][0]) == {"prompt", "chosen", "rejected"}
