"""reward_modeling.py end to end: full fine-tuning and LoRA on the embedded default, real HH-RLHF pairs on a
real pretrained model, a tokenizer without a pad token, and refused input.

Every run is a subprocess (as a user runs it), started from one module fixture two at a time. The long run
(full fine-tuning, 2 epochs of the toy reward split) is checked against the toy task's gold judge: the saved
model must rank held-out pairs, and pairs generated fresh for this test that no dataset holds, the way the
gold judge does.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, assert_ok, assert_user_error, fixture_path, read_json, run_script

RM = str(REPO / "reward_modeling.py")
MERGE = str(REPO / "merge_peft_adapter.py")
QUIET = ["--save_strategy", "no", "--disable_tqdm", "True"]
LORA = ["--max_steps", "40", "--learning_rate", "5e-3", *QUIET]
TINY = ["--max_steps", "2", "--per_device_train_batch_size", "4", *QUIET]
HH = ("data", "hh-rlhf-harmless-base-test-first1500.jsonl.gz")
ALPACA = ("data", "llamafactory-alpaca_en_demo.json")
STORIES = ("models", "stories260K")
GPT2_TOKENIZER = ("tokenizers", "gpt2")
UNSEEN_PAIRS = 300
IDENTICAL_ROWS = 7
MODEL_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")
# two runs at a time on a 2-core machine: one thread each, or torch's thread pools oversubscribe the cores and
# a small run slows down ~30x (measured: 4 s of training took 133 s beside another 2-thread run)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _toy_pairs(tag: str, n: int) -> list[dict]:
    from rlhfkit import toy

    return [toy.make_pair(random.Random(f"{tag}/{i}")) for i in range(n)]


def _assert_no_model_written(out: Path) -> None:
    if out.exists():
        left = [p.name for p in out.rglob("*") if p.name in MODEL_FILES]
        assert left == [], f"model files written to {out}: {left}"


def _tiny_gpt2(folder: Path) -> Path:
    """A random 2-layer GPT-2 with the real GPT-2 tokenizer (no pad token, eos == bos), saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURES.joinpath(*GPT2_TOKENIZER)))
    assert tokenizer.pad_token is None and tokenizer.eos_token_id == tokenizer.bos_token_id
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _rendered(rows: list[dict], tokenizer):
    """Stack-exchange rows rendered as the script renders them (canonical preference rows, then TRL format)."""
    import datasets

    from rlhfkit import data

    columns = ("question", "response_j", "response_k")
    raw = datasets.Dataset.from_list([{key: row[key] for key in columns} for row in rows])
    return data.render(data.normalize(raw, "preference", "test pairs"), "preference", tokenizer)


def _pair_scores(model_dir: str, rows: list[dict]) -> tuple[list[float], list[float]]:
    from rlhfkit import models, scoring

    tokenizer = models.load_tokenizer(model_dir)
    model = models.load_sequence_classifier(model_dir)
    chosen, rejected = scoring.pair_texts(_rendered(rows, tokenizer), tokenizer)
    return scoring.score_texts(model, tokenizer, chosen), scoring.score_texts(model, tokenizer, rejected)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runs(shared_runs, tmp_path_factory):
    """Every run of this module, two at a time: name -> (CompletedProcess, output folder).

    The long full fine-tuning run (conftest's shared toy reward model) takes one worker; the other runs (LoRA then its merge, HH-RLHF on
    stories260K, the refused and edge-case inputs) share the other.
    """
    folder = tmp_path_factory.mktemp("reward")
    pairs = _toy_pairs("identical", 40)
    for row in pairs[:IDENTICAL_ROWS]:
        row["response_k"] = row["response_j"]
    identical = _write_jsonl(folder / "identical.jsonl", pairs)
    jobs = {
        "full": [],  # the shared toy reward model (below)
        "lora": [LORA],
        "identical": [["--dataset_name", str(identical), *TINY]],
        "max_length": [["--max_length", "3", *TINY]],
        "missing_model": [["--model_name_or_path", str(folder / "no-such-model"), *TINY]],
    }
    if FIXTURES.joinpath(*HH).exists() and FIXTURES.joinpath(*STORIES).exists():
        jobs["hh"] = [["--model_name_or_path", str(FIXTURES.joinpath(*STORIES)), "--dataset_name",
                       str(FIXTURES.joinpath(*HH)), "--train_subset", "200", "--eval_subset", "50",
                       "--max_length", "256", "--max_steps", "20", *QUIET]]
    if FIXTURES.joinpath(*ALPACA).exists():
        jobs["alpaca"] = [["--dataset_name", str(FIXTURES.joinpath(*ALPACA)), *TINY]]
    if FIXTURES.joinpath(*GPT2_TOKENIZER).exists():
        gpt2 = _tiny_gpt2(folder / "tiny-gpt2")
        gpt2_pairs = _write_jsonl(folder / "gpt2-pairs.jsonl", _toy_pairs("gpt2", 40))
        jobs["no_pad"] = [["--model_name_or_path", str(gpt2), "--dataset_name", str(gpt2_pairs), "--use_peft",
                           "False", "--max_steps", "3", "--per_device_train_batch_size", "4", *QUIET]]

    def run(name: str):
        if name == "full":  # conftest's SHARED_RUNS["toy-rm"], shared with test_ppo
            shared, (result,) = shared_runs("toy-rm")
            return result, shared / "rm"
        out = folder / name
        result = run_script(RM, "--output_dir", str(out), *jobs[name][0], env=ONE_THREAD)
        if name == "lora" and result.returncode == 0:
            merged = folder / "lora-merged"
            return (result, out), (run_script(MERGE, "--adapter_model_name", str(out), "--output_name",
                                              str(merged), env=ONE_THREAD), merged)
        return result, out

    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run, name) for name in jobs}
        results = {name: future.result() for name, future in futures.items()}
    if isinstance(results["lora"][0], tuple):
        results["lora"], results["lora_merge"] = results["lora"]
    results["folder"] = folder
    return results


# ------------------------------------------------------------------------------------- full fine-tuning
@pytest.mark.slow
def test_full_run_ranks_held_out_pairs(runs):
    result, out = runs["full"]
    assert_ok(result)
    metrics = read_json(out / "eval_results.json")
    all_results = read_json(out / "all_results.json")
    for key in ("eval_accuracy", "eval_auroc", "eval_margin_mean", "eval_score_mean", "eval_score_std",
                "eval_pairs"):
        assert key in metrics and key in all_results, key
        assert all_results[key] == metrics[key], key
    assert metrics["eval_pairs"] == 500  # the whole data/evaluation split, held out from training
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert metrics["eval_auroc"] > 0.5 and metrics["eval_margin_mean"] > 0, metrics
    assert metrics["eval_score_std"] > 0, metrics
    assert "data/reward" in result.stderr and "data/evaluation" in result.stderr
    assert all_results["use_peft"] is False and all_results["train_loss"] > 0
    state = read_json(out / "trainer_state.json")
    assert state["global_step"] == 2 * -(-5000 // 32)  # 2 epochs of the 5000 toy reward pairs


def test_full_run_saves_a_reward_model(runs, embedded_root):
    from transformers import AutoConfig

    result, out = runs["full"]
    assert_ok(result)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "adapter_config.json" not in names
    assert [p.name for p in out.rglob("*.bin") if p.name != "training_args.bin"] == []
    config = AutoConfig.from_pretrained(str(out))
    assert config.num_labels == 1
    assert config.architectures == ["LlamaForSequenceClassification"]
    raw = read_json(out / "config.json")
    pad = json.loads((embedded_root / "model" / "tokenizer_config.json").read_text())["pad_token"]
    assert pad == "<pad>" and raw["pad_token_id"] == 0  # the embedded tokenizer's distinct pad token


@pytest.mark.slow
def test_saved_model_gives_the_reported_accuracy(runs, embedded_root):
    """The saved model, loaded fresh, scores data/evaluation as the run reported (what was saved is what was
    evaluated, and the evaluation used the held-out split)."""
    from rlhfkit.preference_metrics import pair_metrics

    result, out = runs["full"]
    assert_ok(result)
    rows = [json.loads(line) for line in (embedded_root / "data/evaluation/train.jsonl").read_text().splitlines()]
    chosen, rejected = _pair_scores(str(out), rows)
    metrics = pair_metrics(chosen, rejected)
    reported = read_json(out / "eval_results.json")
    assert metrics["pairs"] == reported["eval_pairs"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(reported["eval_accuracy"], abs=2 / len(rows))
    assert metrics["margin_mean"] == pytest.approx(reported["eval_margin_mean"], abs=1e-3)


@pytest.mark.slow
def test_full_run_ranks_unseen_pairs_like_the_gold_judge(runs, embedded_root):
    result, out = runs["full"]
    assert_ok(result)
    seen = set()
    for split in ("finetune", "reward", "evaluation", "rl"):
        for line in (embedded_root / "data" / split / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            seen.add((row["question"], row["response_j"], row["response_k"]))
    fresh = [row for row in _toy_pairs("unseen", UNSEEN_PAIRS)
             if (row["question"], row["response_j"], row["response_k"]) not in seen]
    assert len(fresh) >= UNSEEN_PAIRS - 10
    assert all(row["gold_j"] > row["gold_k"] for row in fresh)  # labelled by the gold judge only
    chosen, rejected = _pair_scores(str(out), fresh)
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(fresh)
    assert accuracy >= 0.85, f"pairwise accuracy on {len(fresh)} unseen pairs: {accuracy:.3f}"


# ------------------------------------------------------------------------------------------------- LoRA
def test_lora_run_saves_adapter_with_score_head(runs, embedded_root):
    from safetensors.torch import load_file

    result, out = runs["lora"]
    assert_ok(result)
    assert not (out / "model.safetensors").exists()  # an adapter, not a full model
    adapter = read_json(out / "adapter_config.json")
    assert adapter["task_type"] == "SEQ_CLS"
    assert Path(adapter["base_model_name_or_path"]).resolve() == (embedded_root / "model").resolve()
    weights = load_file(str(out / "adapter_model.safetensors"))
    heads = [name for name in weights if "score" in name]
    assert heads, sorted(weights)
    assert any(weights[name].shape[0] == 1 for name in heads)  # the 1-output head itself, trained in full
    assert any("lora_" in name for name in weights)
    results = read_json(out / "all_results.json")
    assert results["use_peft"] is True
    assert read_json(out / "trainer_state.json")["global_step"] == 40
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_pairs"] == 500


def test_merged_lora_reward_model_scores_as_base_plus_adapter(runs, embedded_root):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rlhfkit import models, scoring

    (_, adapter), (merge, merged_dir) = runs["lora"], runs["lora_merge"]
    assert_ok(merge)
    assert not (merged_dir / "adapter_config.json").exists()
    rows = [json.loads(line) for line in (embedded_root / "data/evaluation/train.jsonl").read_text().splitlines()]
    tokenizer = models.load_tokenizer(str(merged_dir))
    chosen, rejected = scoring.pair_texts(_rendered(rows[:10], tokenizer), tokenizer)
    texts = chosen + rejected
    assert len(texts) == 20

    merged = AutoModelForSequenceClassification.from_pretrained(str(merged_dir))
    assert merged.config.num_labels == 1 and merged.config.pad_token_id == tokenizer.pad_token_id
    base = AutoModelForSequenceClassification.from_pretrained(str(embedded_root / "model"), num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    unmerged = PeftModel.from_pretrained(base, str(adapter))  # base + adapter, not folded into the weights
    merged_scores = torch.tensor(scoring.score_texts(merged, tokenizer, texts, batch_size=8))
    unmerged_scores = torch.tensor(scoring.score_texts(unmerged, tokenizer, texts, batch_size=8))
    assert merged_scores.std() > 1e-3  # different texts, different scores
    torch.testing.assert_close(merged_scores, unmerged_scores, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ real HH-RLHF on stories260K
def test_real_hh_pairs_on_stories260k(runs):
    fixture_path(*HH)
    stories = fixture_path(*STORIES)
    result, out = runs["hh"]
    assert_ok(result)
    assert "schema hh_rlhf -> preference" in result.stderr
    metrics = read_json(out / "eval_results.json")
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and 0 < metrics["eval_pairs"] <= 50
    results = read_json(out / "all_results.json")
    assert results["model"] == str(stories) and results["train_loss"] > 0
    assert read_json(out / "trainer_state.json")["global_step"] == 20


# -------------------------------------------------------------------------------------- input handling
def test_alpaca_file_is_a_user_error_naming_preference(runs):
    data = fixture_path(*ALPACA)
    result, out = runs["alpaca"]
    assert_user_error(result, str(data), "alpaca", "preference")
    _assert_no_model_written(out)


def test_identical_pairs_are_dropped_with_a_count(runs):
    result, out = runs["identical"]
    assert_ok(result)
    assert f"dropped {IDENTICAL_ROWS} invalid row(s)" in result.stderr, result.stderr[-3000:]
    assert f"chosen and rejected are identical: {IDENTICAL_ROWS}" in result.stderr
    kept = 40 - IDENTICAL_ROWS
    held = kept // 10
    assert f"training pairs: {kept - held}, held-out pairs: {held}" in result.stderr
    assert read_json(out / "trainer_state.json")["global_step"] == 2


def test_max_length_below_every_example_is_a_user_error(runs):
    result, out = runs["max_length"]
    assert_user_error(result, "--max_length 3", "shorter than every example")
    _assert_no_model_written(out)


@pytest.mark.slow
def test_tokenizer_without_pad_token_pads_with_eos(runs):
    fixture_path(*GPT2_TOKENIZER)
    from rlhfkit import models, scoring

    result, out = runs["no_pad"]
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if "no pad token" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], result.stderr[-3000:]
    config = read_json(out / "config.json")
    assert config["eos_token_id"] == 50256 and config["pad_token_id"] == config["eos_token_id"]
    tokenizer = models.load_tokenizer(str(out))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    model = models.load_sequence_classifier(str(out))
    texts = ["Question: How was the pizza?\n\nAnswer: The pizza is great.<|endoftext|>",
             "Question: Describe the old castle.\n\nAnswer: The castle is dull and sad. It was noisy.<|endoftext|>"]
    batched = scoring.score_texts(model, tokenizer, texts, batch_size=2)
    alone = [scoring.score_texts(model, tokenizer, [text])[0] for text in texts]
    assert batched == pytest.approx(alone, abs=1e-5)  # padding with EOS does not move the score


def test_nonexistent_model_is_a_user_error(runs):
    result, out = runs["missing_model"]
    assert_user_error(result, str(runs["folder"] / "no-such-model"), "does not exist")
    _assert_no_model_written(out)
