"""Every script against every bad input that applies to it, as one matrix.

Each case must end with exit code 2, exactly one ``error: ...`` line that names the problem (the fragments
below), no traceback, and the output folder as it was (absent, or unchanged when it held something). The
scripts run in this process through their ``cli()`` entry (the same code path as the command line, without
paying an interpreter start per case); ``test_cli.py`` and the per-script tests cover the command line itself.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import load_script

pytestmark = pytest.mark.slow  # every test here trains a model or runs a script

CRITIC_FREE = ("grpo.py", "rloo.py")
TRAINERS = ("sft.py", "reward_modeling.py", "dpo.py", "kto.py", "ppo.py", *CRITIC_FREE)
DATA_SCRIPTS = (*TRAINERS, "compare_base_vs_ppo.py")
ALL = (*DATA_SCRIPTS, "merge_peft_adapter.py", "run_generation.py")


@pytest.fixture(scope="module")
def world(embedded_root, tmp_path_factory):
    """Files the cases point at: data files good and bad, a non-model folder, a reward model, configs."""
    import torch

    from rlhfkit import models

    root = tmp_path_factory.mktemp("bad-input")
    (root / "empty.jsonl").write_text("")
    (root / "malformed.jsonl").write_text('{"question": "How was the pizza?", "response_j": "Good.", '
                                          '"response_k": "Bad."}\n{"question": "oops"\n')
    (root / "unknown.jsonl").write_text(json.dumps({"foo": "bar", "baz": 1}) + "\n")
    (root / "notamodel").mkdir()
    (root / "notamodel" / "notes.txt").write_text("not a model")
    (root / "unknown_key.yaml").write_text("nonsense_key: 1\n")
    rm = root / "rm"
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    classifier = models.load_sequence_classifier(str(embedded_root / "model"), pad_token_id=tokenizer.pad_token_id)
    classifier.save_pretrained(rm, safe_serialization=True)
    tokenizer.save_pretrained(rm)
    adapter = root / "adapter"  # a LoRA adapter trained for another base (different shapes)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    other.save_pretrained(root / "other_base", safe_serialization=True)
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    return {"root": root, "model": str(embedded_root / "model"), "data": str(embedded_root), "rm": str(rm),
            "adapter": str(adapter)}


def _required(script: str, w: dict) -> list[str]:
    """The flags a script needs besides the case's own (a working default for everything else)."""
    return {
        "ppo.py": ["--reward_function", "toy"],
        "grpo.py": ["--reward_function", "toy"],
        "rloo.py": ["--reward_function", "toy"],
        "compare_base_vs_ppo.py": ["--finetuned_model", w["model"], "--reward_model", w["rm"]],
        "merge_peft_adapter.py": ["--adapter_model_name", w["adapter"]],
        "run_generation.py": ["--prompt", "How was the pizza?"],
    }.get(script, [])


def _output_flag(script: str) -> str | None:
    return {"merge_peft_adapter.py": "--output_name", "run_generation.py": "--output_file"}.get(script, "--output_dir")


def _model_flag(script: str) -> str:
    return {"merge_peft_adapter.py": "--base_model_name", "compare_base_vs_ppo.py": "--base_model"}.get(
        script, "--model_name_or_path")


def _split_flag(script: str) -> str:
    return "--dataset_split" if script == "compare_base_vs_ppo.py" else "--split"


# case: (scripts it applies to, extra flags built from the world, fragments of the one error line)
CASES = {
    "dataset_missing": (DATA_SCRIPTS, lambda s, w: ["--dataset_name", str(w["root"] / "none.jsonl")],
                        ["none.jsonl", "does not exist"]),
    "dataset_empty": (DATA_SCRIPTS, lambda s, w: ["--dataset_name", str(w["root"] / "empty.jsonl")], ["is empty"]),
    "dataset_malformed": (DATA_SCRIPTS, lambda s, w: ["--dataset_name", str(w["root"] / "malformed.jsonl")],
                          ["malformed JSON", "malformed.jsonl, line 2"]),
    "unknown_schema": (DATA_SCRIPTS, lambda s, w: ["--dataset_name", str(w["root"] / "unknown.jsonl")],
                       ["columns [", "match no known schema"]),
    "wrong_split": (DATA_SCRIPTS, lambda s, w: ["--dataset_name", w["data"], _split_flag(s), "nope"],
                    ["split 'nope' not found", "splits there: train"]),
    "model_missing": (ALL, lambda s, w: [_model_flag(s), str(w["root"] / "no-model")], ["no-model", "does not exist"]),
    "not_a_model": (ALL, lambda s, w: [_model_flag(s), str(w["root"] / "notamodel")],
                    ["notamodel is not a model folder"]),
    "adapter_for_another_base": (("merge_peft_adapter.py",), lambda s, w: ["--base_model_name", w["model"]],
                                 ["does not fit base", "merge it into the base model it was trained on"]),
    "reward_model_not_a_classifier": (("ppo.py", "compare_base_vs_ppo.py", *CRITIC_FREE),
                                      lambda s, w: (["--reward_model", w["model"]] if s == "compare_base_vs_ppo.py"
                                                    else ["--reward_function", None, "--reward_model_name", w["model"]]),
                                      ["is a LlamaForCausalLM, not a reward model", "reward_modeling.py"]),
    "max_length_too_small": (("sft.py", "reward_modeling.py", "dpo.py", "kto.py"), lambda s, w: ["--max_length", "3"],
                             ["--max_length 3 is shorter than every example"]),
    "prompt_too_long": (("ppo.py", "compare_base_vs_ppo.py"), lambda s, w: ["--input_max_length", "2"],
                        ["longer than --input_max_length 2"]),
    "batch_not_divisible": (("ppo.py",), lambda s, w: ["--batch_size", "6", "--mini_batch_size", "4"],
                            ["--batch_size 6 is not a multiple of"]),
    "max_prompt_length_too_small": (CRITIC_FREE, lambda s, w: ["--max_prompt_length", "2"],
                                    ["longer than --max_prompt_length 2"]),
    "groups_not_dividing": (CRITIC_FREE, lambda s, w: ["--num_generations", "3"],
                            ["--num_generations 3 does not divide the generation batch of 8"]),
    "vllm_off_cuda": (CRITIC_FREE, lambda s, w: ["--use_vllm", "--device", "cpu"],
                      ["--use_vllm generates with vLLM, which runs on CUDA only (this run is on cpu)"]),
    "cuda_absent": ((*DATA_SCRIPTS, "run_generation.py"), lambda s, w: ["--device", "cuda"],
                    ["--device cuda requested but this machine has"]),
    "hpu_absent": ((*DATA_SCRIPTS, "run_generation.py"), lambda s, w: ["--device", "hpu"],
                   ["habana_frameworks is not installed"]),
    "conflicting_device_flags": ((*DATA_SCRIPTS, "run_generation.py"),
                                 lambda s, w: ["--use_habana", "--device", "cpu"], ["--use_habana and --device cpu disagree"]),
    "conflicting_precision": ((*DATA_SCRIPTS, "run_generation.py"), lambda s, w: ["--bf16", "--fp16"],
                              ["--bf16 and --fp16"]),
    "unknown_config_key": (ALL, lambda s, w: ["--config", str(w["root"] / "unknown_key.yaml")],
                           ["unknown key(s) nonsense_key"]),
    "output_dir_not_empty": (TRAINERS, lambda s, w: [], ["is not empty: pass --overwrite_output_dir"]),
}
MATRIX = [(case, script) for case, (scripts, _, _) in CASES.items() for script in scripts]


def _without(args: list, flag: str) -> list:
    """``args`` minus ``flag`` and its value (a case passes ``flag, None`` to drop a required flag)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        out.append(arg)
    return out


@pytest.mark.parametrize(("case", "script"), MATRIX, ids=[f"{c}-{s[:-3]}" for c, s in MATRIX])
def test_bad_input(case, script, world, tmp_path, capsys):
    _, build, fragments = CASES[case]
    extra = build(script, world)
    args = _required(script, world)
    for i in range(0, len(extra) - 1):
        if extra[i + 1] is None:  # ("--flag", None): drop a required flag
            args = _without(args, extra[i])
    extra = [e for i, e in enumerate(extra) if e is not None and not (i + 1 < len(extra) and extra[i + 1] is None)]
    out = tmp_path / ("out.jsonl" if script == "run_generation.py" else "out")
    if case == "output_dir_not_empty":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    before = sorted(os.listdir(out)) if out.is_dir() else None
    with pytest.raises(SystemExit) as stopped:
        load_script(script).cli([*args, _output_flag(script), str(out), *extra])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    if before is None:
        assert not out.exists(), f"{out} was created"
    else:
        assert sorted(os.listdir(out)) == before and (out / "precious.txt").read_text() == "keep me"
