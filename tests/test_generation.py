"""Batched generation (rlhfkit.sampling) and run_generation.py: prompts, files, adapters, refused input.

The script runs are independent subprocesses, started together in one module fixture (in parallel).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import FIXTURES, REPO, assert_ok, assert_user_error, fixture_path, run_script

GENERATE = str(REPO / "run_generation.py")
TOY_QUESTIONS = [
    "How was the pizza?",
    "Describe the red bicycle.",
    "Tell me about the old castle. I went there last summer with my whole family and we stayed a week.",
    "Write a short review of the museum.",
    "What do you think of the big umbrella?",
    "Hi",
]
STORY_PROMPTS = [
    "Once upon a time",
    "The dog",
    "Lily and Tom went to the park to play with a big red ball",
    "Tim",
    "One day, a little bird",
    "She said",
]
# Greedy stories260K after "Once upon a time" (--prompt_format raw), found by running the script once.
STORY_OPENING = ", there was a little girl named Lily. She loved to play"
TOKENS_PER_SECOND = re.compile(r"(\d+) new tokens in [\d.]+s: ([\d.]+) tokens/s")


def _completions(stdout: str) -> dict[str, list[str]]:
    """run_generation.py's stdout as {prompt: [completion, ...]}: a '### prompt: ' line, one line per
    completion (possibly empty), then a blank line."""
    assert stdout.endswith("\n\n"), stdout
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout[:-1].split("\n"):
        if line.startswith("### prompt: "):
            current = out.setdefault(line[len("### prompt: "):], [])
        else:
            assert current is not None, stdout
            current.append(line)
    for lines in out.values():
        assert lines and lines[-1] == "", stdout
        lines.pop()
    return out


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------ batched == one at a time
def _assert_batched_equals_unbatched(model, tokenizer, prompts, prompt_format):
    from rlhfkit.sampling import encode_prompts, generate_text

    lengths = {len(ids) for ids in encode_prompts(tokenizer, prompts, prompt_format)[1]}
    assert len(lengths) >= 4, lengths  # left padding really happens
    side = tokenizer.padding_side
    batched = generate_text(model, tokenizer, prompts, prompt_format, max_new_tokens=24, batch_size=len(prompts))
    single = generate_text(model, tokenizer, prompts, prompt_format, max_new_tokens=24, batch_size=1)
    assert tokenizer.padding_side == side  # restored after generating
    assert len(batched.completions) == len(prompts) and all(len(c) == 1 for c in batched.completions)
    assert sum(bool(c[0]) for c in batched.completions) >= len(prompts) - 1
    assert batched.completions == single.completions
    assert batched.new_tokens == single.new_tokens > 0


def test_batched_greedy_equals_unbatched_embedded(embedded_root):
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.sampling import format_prompt

    model_dir = str(embedded_root / "model")
    tokenizer = load_tokenizer(model_dir)
    assert format_prompt(tokenizer, TOY_QUESTIONS[0]) == "Question: How was the pizza?\n\nAnswer:"
    _assert_batched_equals_unbatched(load_causal_lm(model_dir), tokenizer, TOY_QUESTIONS, "auto")


@pytest.mark.slow
def test_batched_greedy_equals_unbatched_stories260k():
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.sampling import format_prompt

    model_dir = str(fixture_path("models", "stories260K"))
    tokenizer = load_tokenizer(model_dir)
    assert [format_prompt(tokenizer, p, "raw") for p in STORY_PROMPTS] == STORY_PROMPTS
    _assert_batched_equals_unbatched(load_causal_lm(model_dir), tokenizer, STORY_PROMPTS, "raw")


# ----------------------------------------------------------------------------------------- script runs
@pytest.fixture(scope="module")
def adapter_dir(embedded_root, tmp_path_factory):
    """A LoRA adapter made with peft on the embedded model (random, non-zero LoRA weights; no tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(embedded_root / "model")),
        LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out = tmp_path_factory.mktemp("gen-adapter") / "adapter"
    model.save_pretrained(str(out))
    assert not (out / "tokenizer_config.json").exists()
    return out


@pytest.fixture(scope="module")
def runs(embedded_root, adapter_dir, tmp_path_factory):
    """Every run_generation.py run of this module, in parallel: name -> (CompletedProcess, extra)."""
    folder = tmp_path_factory.mktemp("gen-runs")
    txt = folder / "prompts.txt"
    txt.write_text("How was the pizza?\n\nDescribe the lamp.\nTell me about the new train.\n", encoding="utf-8")
    rows = [json.loads(line) for line in (embedded_root / "data/evaluation/train.jsonl").read_text().splitlines()[:2]]
    jsonl = folder / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    specs = {
        "adapter": ["--model_name_or_path", str(adapter_dir), "--prompt", "How was the pizza?",
                    "--max_new_tokens", "24"],
        "txt": ["--prompt_file", str(txt), "--output_file", str(folder / "txt-out.jsonl"),
                "--num_return_sequences", "2", "--do_sample", "--max_new_tokens", "16", "--batch_size", "2"],
        "jsonl": ["--prompt_file", str(jsonl), "--output_file", str(folder / "jsonl-out.jsonl"),
                  "--max_new_tokens", "16"],
        "no_prompts": [],
        "greedy_many": ["--prompt", "Hi", "--num_return_sequences", "2"],
        "chat": ["--prompt", "Hi", "--prompt_format", "chat"],
        "cuda": ["--prompt", "Hi", "--device", "cuda"],
    }
    stories = FIXTURES / "models" / "stories260K"
    if stories.exists():
        specs["stories"] = ["--model_name_or_path", str(stories), "--prompt", "Once upon a time",
                            "--prompt_format", "raw", "--max_new_tokens", "40"]
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_script, GENERATE, *args) for name, args in specs.items()}
        results = {name: future.result() for name, future in futures.items()}
    return results, {"folder": folder, "txt": txt, "jsonl": jsonl, "rows": rows}


@pytest.mark.slow
def test_stories260k_known_opening_and_tokens_per_second(runs):
    stories = fixture_path("models", "stories260K")
    results, _ = runs
    result = results["stories"]
    assert_ok(result)
    completions = _completions(result.stdout)
    assert list(completions) == ["Once upon a time"]
    assert len(completions["Once upon a time"]) == 1
    assert completions["Once upon a time"][0].startswith(STORY_OPENING), completions
    match = TOKENS_PER_SECOND.search(result.stderr)
    assert match, result.stderr
    assert int(match.group(1)) == 40 and float(match.group(2)) > 0
    assert str(stories) not in result.stdout  # results only on stdout, logs on stderr


def test_adapter_folder_loads_its_base(runs, adapter_dir, embedded_root):
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.sampling import generate_text

    results, _ = runs
    result = results["adapter"]
    assert_ok(result)
    assert f"loading adapter {adapter_dir} onto its base {embedded_root / 'model'}" in result.stderr
    got = _completions(result.stdout)["How was the pizza?"]
    tokenizer = load_tokenizer(str(embedded_root / "model"))
    questions = ["How was the pizza?"]
    expected = generate_text(load_causal_lm(str(adapter_dir), merge_adapter=True), tokenizer, questions,
                             max_new_tokens=24)
    base = generate_text(load_causal_lm(str(embedded_root / "model")), tokenizer, questions, max_new_tokens=24)
    prompt = expected.prompts
    assert got == expected.completions[0]
    import torch

    base_model = load_causal_lm(str(embedded_root / "model"))
    adapted = load_causal_lm(str(adapter_dir), merge_adapter=True)
    ids = tokenizer(prompt[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the adapter is really applied (greedy text may coincide with the base's)
        assert not torch.allclose(adapted(ids).logits, base_model(ids).logits, atol=1e-4)
    assert base.completions


def test_prompt_file_txt_sampling_two_each(runs):
    results, paths = runs
    result = results["txt"]
    assert_ok(result)
    prompts = ["How was the pizza?", "Describe the lamp.", "Tell me about the new train."]
    records = _read_jsonl(paths["folder"] / "txt-out.jsonl")
    assert [r["prompt"] for r in records] == prompts  # blank lines skipped, order kept
    for record in records:
        assert record["formatted_prompt"] == f"Question: {record['prompt']}\n\nAnswer:"
        assert len(record["completions"]) == 2 and all(isinstance(c, str) for c in record["completions"])
    assert any(c for r in records for c in r["completions"])
    assert _completions(result.stdout) == {r["prompt"]: r["completions"] for r in records}


def test_prompt_file_jsonl_question_schema(runs):
    results, paths = runs
    result = results["jsonl"]
    assert_ok(result)
    records = _read_jsonl(paths["folder"] / "jsonl-out.jsonl")
    questions = [row["question"] for row in paths["rows"]]
    assert len(records) == len(questions) == 2
    for record, question in zip(records, questions, strict=True):
        assert record["prompt"] == [{"role": "user", "content": question}]
        assert record["formatted_prompt"] == f"Question: {question}\n\nAnswer:"
        assert len(record["completions"]) == 1
    assert sum(bool(r["completions"][0]) for r in records) >= 1


def test_no_prompts_is_a_user_error(runs):
    results, _ = runs
    assert_user_error(results["no_prompts"], "no prompts", "--prompt", "--prompt_file")


def test_several_greedy_sequences_is_a_user_error(runs):
    results, _ = runs
    assert_user_error(results["greedy_many"], "--num_return_sequences", "--do_sample")


def test_chat_format_without_template_is_a_user_error(runs):
    results, _ = runs
    assert_user_error(results["chat"], "chat", "no chat template")
    assert results["chat"].stdout == ""


def test_cuda_on_cpu_only_machine_is_a_user_error(runs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    results, _ = runs
    assert_user_error(results["cuda"], "--device cuda", "CPU-only" if torch.version.cuda is None else "no visible")
