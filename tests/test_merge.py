"""merge_peft_adapter.py: causal and reward (sequence-classification) merges, wrong bases, output folder rules.

The adapters are made directly with peft on the embedded model (``init_lora_weights=False``, so they change
the model's output), and every merge runs the script in a subprocess; the runs are independent, so they run
in parallel in one module fixture.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, assert_ok, assert_user_error, fixture_path, run_script

MERGE = str(REPO / "merge_peft_adapter.py")
TEXTS = [
    "Question: How was the pizza?\n\nAnswer: The pizza is great.",
    "Question: Describe the red bicycle.\n\nAnswer: I think the bicycle was very lovely and fun. It was bright.",
    "Hi",
    "Question: Tell me about the old castle.\n\nAnswer: The castle is dull.",
]
SENTINEL = "keep me\n"


def _batch(tokenizer):
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()  # really padded
    return enc


@pytest.fixture(scope="module")
def adapters(embedded_root, tmp_path_factory):
    """A causal-LM and a reward (SEQ_CLS, randomised score head) LoRA adapter on the embedded model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    base = str(embedded_root / "model")
    folder = tmp_path_factory.mktemp("merge-adapters")
    torch.manual_seed(0)
    causal = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    causal.save_pretrained(str(folder / "causal"))

    torch.manual_seed(1)
    classifier = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    initial_head = classifier.score.weight.detach().clone()
    reward = get_peft_model(
        classifier,
        LoraConfig(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    head = reward.base_model.model.score.modules_to_save["default"]
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0)
    trained_head = head.weight.detach().clone()
    assert not torch.allclose(trained_head, initial_head, atol=0.1)
    reward.save_pretrained(str(folder / "reward"))
    return {"base": base, "causal": folder / "causal", "reward": folder / "reward",
            "trained_head": trained_head, "initial_head": initial_head}


@pytest.fixture(scope="module")
def merges(adapters, embedded_root, tmp_path_factory):
    """Every merge run of this module, in parallel: name -> (CompletedProcess, output folder)."""
    out = tmp_path_factory.mktemp("merges")
    copy = out / "copied-base"
    shutil.copytree(embedded_root / "model", copy)
    for name in ("existing", "overwritten"):
        (out / name).mkdir()
        (out / name / "notes.txt").write_text(SENTINEL, encoding="utf-8")
    causal = ["--adapter_model_name", str(adapters["causal"])]
    runs = {
        "causal": causal,
        "reward": ["--adapter_model_name", str(adapters["reward"])],
        "copied_base": [*causal, "--base_model_name", str(copy)],
        "existing": causal,
        "overwritten": [*causal, "--overwrite_output_dir"],
        "not_adapter": ["--adapter_model_name", str(embedded_root / "model")],
        "missing_adapter": ["--adapter_model_name", str(out / "no-such-adapter")],
    }
    stories = FIXTURES / "models" / "stories260K"
    if stories.exists():
        runs["wrong_shapes"] = [*causal, "--base_model_name", str(stories)]
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_script, MERGE, *args, "--output_name", str(out / name))
                   for name, args in runs.items()}
        results = {name: (future.result(), out / name) for name, future in futures.items()}
    results["copied_base_path"] = copy
    return results


# ------------------------------------------------------------------------------------------- causal LM
@pytest.mark.slow
def test_causal_merge_equals_base_plus_adapter(merges, adapters):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, merged_dir = merges["causal"]
    assert_ok(result)
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    assert not any(name.endswith(".bin") for name in names)

    base_tokenizer = AutoTokenizer.from_pretrained(adapters["base"])
    merged_tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    assert merged_tokenizer(TEXTS)["input_ids"] == base_tokenizer(TEXTS)["input_ids"]
    enc = _batch(base_tokenizer)

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert not hasattr(merged, "peft_config")
    base = AutoModelForCausalLM.from_pretrained(adapters["base"]).eval()
    with torch.no_grad():
        base_logits = base(**enc).logits
        peft = PeftModel.from_pretrained(base, str(adapters["causal"])).eval()
        peft_logits = peft(**enc).logits
        merged_logits = merged(**enc).logits
    mask = enc["attention_mask"].bool()
    assert (peft_logits - base_logits)[mask].abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(merged_logits[mask], peft_logits[mask], atol=1e-4, rtol=0)
    info = json.loads((merged_dir / "merge_info.json").read_text())
    assert info["task_type"] == "CAUSAL_LM" and info["base"] == adapters["base"]


# ------------------------------------------------------------------------------------ reward (SEQ_CLS)
def test_reward_merge_keeps_trained_score_head(merges, adapters):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, merged_dir = merges["reward"]
    assert_ok(result)
    assert not (merged_dir / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    merged = AutoModelForSequenceClassification.from_pretrained(str(merged_dir)).eval()
    assert merged.config.num_labels == 1 and merged.score.weight.shape[0] == 1
    assert merged.config.pad_token_id is not None and merged.config.pad_token_id == tokenizer.pad_token_id
    torch.testing.assert_close(merged.score.weight, adapters["trained_head"], atol=0, rtol=0)
    assert not torch.allclose(merged.score.weight, adapters["initial_head"], atol=0.1)

    base = AutoModelForSequenceClassification.from_pretrained(adapters["base"], num_labels=1)
    peft = PeftModel.from_pretrained(base, str(adapters["reward"])).eval()
    enc = _batch(tokenizer)
    with torch.no_grad():
        peft_scores = peft(**enc).logits
        merged_scores = merged(**enc).logits
        alone = torch.cat([merged(**tokenizer([text], return_tensors="pt")).logits for text in TEXTS])
    assert merged_scores.shape == (len(TEXTS), 1)
    assert merged_scores.std() > 1e-3  # different texts, different scores
    torch.testing.assert_close(merged_scores, peft_scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged_scores, alone, atol=1e-4, rtol=0)  # padding does not move a score
    info = json.loads((merged_dir / "merge_info.json").read_text())
    assert info["task_type"] == "SEQ_CLS"


# ---------------------------------------------------------------------------------------- wrong base
def test_other_base_with_same_shapes_merges_with_a_warning(merges, adapters):
    from safetensors.torch import load_file

    result, merged_dir = merges["copied_base"]
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert f"trained on base '{adapters['base']}'" in warnings[0]
    assert f"merged into '{merges['copied_base_path']}'" in warnings[0]
    assert json.loads((merged_dir / "merge_info.json").read_text())["base"] == str(merges["copied_base_path"])
    # the copy holds the same weights, so the result is the ordinary merge
    ours = load_file(str(merged_dir / "model.safetensors"))
    reference = load_file(str(merges["causal"][1] / "model.safetensors"))
    assert ours.keys() == reference.keys()
    assert all((ours[k] == reference[k]).all() for k in ours)


def test_recorded_base_merges_without_warning(merges):
    result, _ = merges["causal"]
    assert_ok(result)
    assert "WARNING" not in result.stderr, result.stderr


def test_adapter_that_does_not_fit_the_base_is_refused(merges, adapters):
    stories = fixture_path("models", "stories260K")
    result, out = merges["wrong_shapes"]
    assert_user_error(result, "does not fit", str(stories), str(adapters["causal"]))
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging left


# ------------------------------------------------------------------------------------- output folder
def test_existing_output_is_refused_without_overwrite(merges):
    result, out = merges["existing"]
    assert_user_error(result, str(out), "exists and is not empty", "--overwrite_output_dir")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == SENTINEL


def test_existing_output_is_replaced_with_overwrite(merges):
    result, out = merges["overwritten"]
    assert_ok(result)
    names = {p.name for p in out.iterdir()}
    assert "notes.txt" not in names
    assert {"config.json", "model.safetensors", "tokenizer.json", "merge_info.json"} <= names
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no staging left


def test_folder_without_adapter_config_is_refused(merges, embedded_root):
    result, out = merges["not_adapter"]
    assert_user_error(result, str(embedded_root / "model"), "not a PEFT adapter", "adapter_config.json")
    assert not out.exists()


def test_missing_adapter_folder_is_refused(merges):
    result, out = merges["missing_adapter"]
    assert_user_error(result, str(out.parent / "no-such-adapter"), "is not a folder")
    assert not out.exists()


def test_copied_base_is_a_real_copy(merges, embedded_root):
    copy: Path = merges["copied_base_path"]
    assert copy.resolve() != (embedded_root / "model").resolve()
    assert (copy / "model.safetensors").read_bytes() == (embedded_root / "model" / "model.safetensors").read_bytes()
