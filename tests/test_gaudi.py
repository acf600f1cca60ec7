"""The Gaudi (HPU) path of every script, on the CPU, against stand-ins for Habana's runtime and optimum-habana.

No Gaudi machine is available, so ``tests/stubs/habana_frameworks`` plays the runtime: it records every call a
Gaudi run makes (import with the lazy-mode variable, ``mark_step`` and who called it, HPU-graph wrapping and the
shape of each call into a wrapped module, the fused optimizer and clipping) and computes on the CPU. What these
tests prove is that the scripts drive the runtime as Gaudi needs; not that Habana's kernels give the same
numbers (nothing here ran on a Gaudi card).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, STUBS, assert_user_error

from rlhfkit import hpu
from rlhfkit.device import DeviceInfo
from rlhfkit.errors import UserError

OPTIMUM_STUB = Path(__file__).resolve().parent / "stubs_optimum"
# optimum-habana 1.21.2's real pins (its setup.py), which no TRL 1.x can share
PINS_1_21_2 = ["transformers<4.56,>=4.55", "accelerate<=1.10.1,>=1.7", "optimum<2.1,>=2.0"]


def run_standin(script: str, *args: str, tmp_path: Path, optimum: list[str] | None = None):
    """Run a script with the habana_frameworks stand-in importable and PT_HPU_LAZY_MODE unset (so only the
    script can set it); ``optimum``: the optimum-habana stand-in too, with these Requires-Dist pins.
    Returns (CompletedProcess, the stand-in's records)."""
    log = tmp_path / f"standin-{len(list(tmp_path.glob('standin-*')))}.jsonl"
    paths = [str(STUBS)]
    if optimum is not None:
        paths += [str(OPTIMUM_STUB), str(optimum_distribution(tmp_path, optimum))]
    env = {k: v for k, v in os.environ.items() if k != "PT_HPU_LAZY_MODE"}
    # DS_ACCELERATOR: the registry's DeepSpeed (for the ZeRO configs) would take the stand-in for a Gaudi and pick its
    # HPU accelerator, which needs Habana's runtime; a real Gaudi runs Habana's own DeepSpeed fork
    env.update(PYTHONPATH=os.pathsep.join(paths), HABANA_STANDIN_LOG=str(log), PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")
    result = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, records


def optimum_distribution(tmp_path: Path, requires: list[str], version: str = "1.21.2") -> Path:
    """A folder holding ``optimum_habana-<version>.dist-info`` with these requirements (what pip would write)."""
    site = tmp_path / f"optimum-site-{abs(hash(tuple(requires)))}"
    info = site / f"optimum_habana-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", "Name: optimum-habana", f"Version: {version}",
             *[f"Requires-Dist: {r}" for r in requires], 'Requires-Dist: pytest; extra == "tests"']
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return site


def events(records, name):
    return [r for r in records if r["event"] == name]


def flushes(records):
    return [r["caller"] for r in events(records, "mark_step")]


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def results_of(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


GAUDI = ["--use_habana", "--use_lazy_mode"]
# Gaudi's default precision is bf16, which transformers accepts only on a device it sees; the stand-in's Trainer
# runs on the CPU (transformers finds no torch.hpu), so the Trainer runs here pass fp32 (also quicker and exact)
FP32 = ["--bf16", "False"]


# ------------------------------------------------------------------------------------- Trainer scripts


@pytest.mark.slow
def test_sft_on_gaudi_flushes_fuses_and_pads_to_one_shape(embedded_root, tmp_path):
    """SFT with --pad_max and --use_hpu_graphs: lazy mode set before the runtime is imported; a flush after each
    of the 2 backward passes and after each of the 3 optimizer steps (in that order); Habana's fused AdamW and
    clip norm doing the steps; the model captured with ModuleCacher and every training batch one shape."""
    out = tmp_path / "sft"
    result, records = run_standin(
        "sft.py", *GAUDI, *FP32, "--output_dir", str(out), "--max_steps", "3", "--gradient_accumulation_steps", "2",
        "--per_device_train_batch_size", "4", "--pad_max", "--max_length", "64", "--max_train_samples", "64",
        "--use_hpu_graphs", "--report_to", "none", tmp_path=tmp_path)
    ok(result)
    assert records[0] == {"event": "import", "module": "core", "lazy_mode": "1"}
    assert "trainer: TRL" in result.stderr and "optimum-habana not used: optimum-habana is not installed" in result.stderr
    # order: forward+backward, flush; forward+backward, flush; clip, fused step, flush — three times
    sequence = [r["event"] if r["event"] != "mark_step" else r["caller"] for r in records
                if r["event"] in ("mark_step", "fused_adamw_step", "fused_clip_norm_call")]
    step = ["flush_after_backward", "flush_after_backward", "fused_clip_norm_call", "fused_adamw_step",
            "flush_after_optimizer_step"]
    assert sequence == step * 3, sequence
    assert len(events(records, "fused_adamw")) == 1 and len(events(records, "module_cacher")) == 1
    assert {tuple(r["shape"]) for r in events(records, "graph_call")} == {(4, 64)}
    assert results_of(out)["train_batch_shapes"] == [[4, 64]]
    assert results_of(out)["device"] == {"type": "hpu", "lazy_mode": True}


@pytest.mark.slow
def test_without_static_shapes_batches_vary(embedded_root, tmp_path):
    """The contrast to the test above: the same run with padding to the longest row sees several shapes (one
    compile each on Gaudi); with --num_buckets 4 at most four widths, all multiples of 16."""
    common = [*FP32, "--max_steps", "6", "--per_device_train_batch_size", "4", "--max_length", "64",
              "--max_train_samples", "64", "--report_to", "none"]
    result, _ = run_standin("sft.py", "--device", "cpu", *common, "--output_dir", str(tmp_path / "a"),
                            tmp_path=tmp_path)
    ok(result)
    assert len(results_of(tmp_path / "a")["train_batch_shapes"]) > 1
    result, records = run_standin("sft.py", *GAUDI, *common, "--num_buckets", "4", "--output_dir",
                                  str(tmp_path / "b"), tmp_path=tmp_path)
    ok(result)
    shapes = results_of(tmp_path / "b")["train_batch_shapes"]
    assert {rows for rows, _ in shapes} == {4} and all(width in (16, 32, 48, 64) for _, width in shapes), shapes


@pytest.mark.slow
def test_reward_modeling_on_gaudi(embedded_root, tmp_path):
    out = tmp_path / "rm"
    result, records = run_standin(
        "reward_modeling.py", *GAUDI, *FP32, "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--pad_max", "--max_length", "96", "--train_subset", "32",
        "--eval_subset", "8", "--report_to", "none", tmp_path=tmp_path)
    ok(result)
    assert records[0]["lazy_mode"] == "1"
    assert flushes(records) == ["flush_after_backward", "flush_after_optimizer_step"] * 2
    # a batch of 4 pairs is 8 rows (chosen then rejected), all padded to --max_length
    assert results_of(out)["train_batch_shapes"] == [[8, 96]]
    assert "trainer: TRL" in result.stderr and "RewardTrainer" in result.stderr


@pytest.mark.slow
def test_dpo_on_gaudi(embedded_root, tmp_path):
    out = tmp_path / "dpo"
    result, records = run_standin(
        "dpo.py", *GAUDI, *FP32, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--pad_max", "--max_length", "96", "--train_subset", "16",
        "--eval_subset", "4", "--report_to", "none", tmp_path=tmp_path)
    ok(result)
    assert records[0]["lazy_mode"] == "1"
    assert flushes(records) == ["flush_after_backward", "flush_after_backward", "flush_after_optimizer_step"] * 2
    assert results_of(out)["train_batch_shapes"] == [[4, 96]]
    assert len(events(records, "fused_adamw_step")) == 2


@pytest.mark.slow
def test_grpo_on_gaudi_pads_prompts_and_completions_to_fixed_widths(embedded_root, tmp_path):
    """grpo.py (TRL's GRPOTrainer) with Gaudi's hooks: flushes after backward and the optimizer step, fused AdamW, and
    --pad_max padding every completion batch to --max_completion_length (prompts to a multiple of it)."""
    out = tmp_path / "grpo"
    result, records = run_standin(
        "grpo.py", *GAUDI, *FP32, "--output_dir", str(out), "--reward_function", "toy", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "16", "--pad_max",
        "--report_to", "none", tmp_path=tmp_path)
    ok(result)
    assert records[0]["lazy_mode"] == "1"
    assert flushes(records) == ["flush_after_backward", "flush_after_optimizer_step"] * 2
    assert results_of(out)["train_batch_shapes"] == [[4, 32]]  # prompts (< 16 tokens) padded to 16, completions to 16
    assert len(events(records, "fused_adamw_step")) == 2
    assert "static shapes: prompt and completion ids padded to multiples of 16 tokens" in result.stderr


@pytest.mark.slow
def test_dpo_lora_refuses_training_graphs(embedded_root, tmp_path):
    """LoRA DPO's reference is the policy with its adapter switched off: a captured graph would replay the
    adapter-on computation and make the reference equal the policy. Refused, not silently wrong."""
    result, _ = run_standin("dpo.py", *GAUDI, *FP32, "--output_dir", str(tmp_path / "d"), "--pad_max",
                            "--max_length", "96", "--use_hpu_graphs", "--train_subset", "8", tmp_path=tmp_path)
    assert_user_error(result, "--use_hpu_graphs with LoRA", "--use_peft False")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [
    (["--use_hpu_graphs"], ["needs static shapes", "--pad_max or --num_buckets"]),
    (["--pad_max", "--num_buckets", "4"], ["--pad_max and --num_buckets", "pass one"]),
    (["--pad_max", "--padding_free"], ["--padding_free", "drop one"]),
])
def test_static_shape_flags_refused_with_the_fix(args, fragments, tmp_path):
    result, records = run_standin("sft.py", *GAUDI, *FP32, "--output_dir", str(tmp_path / "s"), *args,
                                  tmp_path=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------- optimum-habana's trainer


@pytest.mark.slow
def test_optimum_habana_1_21_is_refused_with_its_pins(embedded_root, tmp_path):
    """optimum-habana 1.21.2 installed (its real pins): refused, the log line naming the pin that fails."""
    result, records = run_standin(
        "sft.py", *GAUDI, *FP32, "--output_dir", str(tmp_path / "s"), "--max_steps", "1", "--max_train_samples", "16",
        "--report_to", "none", tmp_path=tmp_path, optimum=PINS_1_21_2)
    ok(result)
    import transformers

    line = next(x for x in result.stderr.splitlines() if "trainer:" in x)
    assert "TRL" in line and "SFTTrainer" in line
    assert f"optimum-habana 1.21.2 requires transformers<4.56,>=4.55 (installed: {transformers.__version__})" in line
    assert not events(records, "gaudi_trainer")


@pytest.mark.slow
def test_a_fitting_optimum_habana_is_chosen(embedded_root, tmp_path):
    """A release whose pins fit and whose Gaudi trainer is built on the installed TRL: used, with GaudiConfig's
    fused AdamW and clip norm, and the script's settings carried into its Gaudi config class."""
    out = tmp_path / "s"
    result, records = run_standin(
        "sft.py", *GAUDI, *FP32, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--pad_max", "--max_length", "64", "--max_train_samples", "16", "--report_to", "none",
        tmp_path=tmp_path, optimum=["transformers>=4.56", "accelerate>=1.0"])
    ok(result)
    assert "trainer: optimum-habana GaudiSFTTrainer" in result.stderr
    (trainer,) = events(records, "gaudi_trainer")
    assert trainer == {"event": "gaudi_trainer", "cls": "GaudiSFTTrainer", "args_cls": "GaudiSFTConfig",
                       "use_habana": True, "use_lazy_mode": True, "use_fused_adam": True, "use_fused_clip_norm": True,
                       "pad_to_multiple_of": 64, "max_steps": 2}
    # GaudiTrainer flushes and fuses by itself: rlhfkit adds neither
    assert not events(records, "mark_step") and not events(records, "fused_adamw")
    assert results_of(out)["train_batch_shapes"] == [[4, 64]]


@pytest.fixture
def optimum_importable(monkeypatch, tmp_path):
    """The optimum-habana stand-in importable in this process, with pins chosen by the test."""
    def install(requires):
        monkeypatch.syspath_prepend(str(OPTIMUM_STUB))
        monkeypatch.syspath_prepend(str(optimum_distribution(tmp_path, requires)))
        importlib.invalidate_caches()

    yield install
    for name in [n for n in sys.modules if n == "optimum" or n.startswith("optimum.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _args(**values):
    from trl import SFTConfig

    return SFTConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True, **values)


def test_off_gaudi_the_trainer_is_trls_without_gaudi_hooks(monkeypatch, caplog):
    """training.make_trainer off Gaudi builds TRL's class with the script's config, records batch shapes, and
    never reaches the Gaudi code."""
    import types

    import trl

    from rlhfkit import training

    built = {}

    class FakeDPOTrainer:
        def __init__(self, args, **kwargs):
            built.update(args=args, **kwargs)

        def training_step(self, model, inputs):
            return 0.5

    monkeypatch.setattr(trl, "DPOTrainer", FakeDPOTrainer)
    for name in ("gaudi_trainer", "choose_trainer", "add_gaudi_hooks"):
        monkeypatch.setattr(hpu, name, lambda *a, **k: pytest.fail("Gaudi code reached off Gaudi"))
    args = _args()
    trainer, shapes = training.make_trainer("dpo", DeviceInfo("cpu"), args, types.SimpleNamespace(use_hpu_graphs=False),
                                            model="the model")
    assert isinstance(trainer, FakeDPOTrainer) and built == {"args": args, "model": "the model"}
    assert trainer.training_step(None, {"input_ids": torch.zeros(2, 7)}) == 0.5
    assert shapes.results() == {"train_batch_shapes": [[2, 7]]}
    assert "trainer:" not in caplog.text


def test_choice_refuses_a_gaudi_trainer_not_built_on_this_trl(optimum_importable, caplog, monkeypatch):
    optimum_importable(["transformers>=4.0"])
    module = importlib.import_module("optimum.habana.trl")
    monkeypatch.setattr(module, "GaudiSFTTrainer", type("GaudiSFTTrainer", (torch.nn.Module,), {}))
    caplog.set_level("INFO")
    choice = hpu.choose_trainer("sft", _args())
    assert choice.backend == "trl"
    assert "has no GaudiSFTTrainer built on the installed TRL" in choice.reason
    assert choice.reason in caplog.text


def test_choice_takes_a_fitting_release(optimum_importable):
    optimum_importable(["transformers>=4.56", "accelerate>=1.0", "not-installed-anywhere>=1"])
    choice = hpu.choose_trainer("reward", _args())
    assert choice.backend == "optimum-habana" and choice.trainer_cls.__name__ == "GaudiRewardTrainer"
    assert choice.gaudi_config.use_fused_adam and choice.gaudi_config.use_fused_clip_norm
    assert choice.args_cls.__name__ == "GaudiRewardConfig"


def test_unmet_requirements_names_each_failing_pin(optimum_importable):
    import accelerate
    import transformers

    optimum_importable(PINS_1_21_2)
    unmet = hpu.unmet_requirements("optimum-habana")
    assert unmet == [f"transformers<4.56,>=4.55 (installed: {transformers.__version__})",
                     f"accelerate<=1.10.1,>=1.7 (installed: {accelerate.__version__})"]  # optimum: not installed


# ----------------------------------------------------------------------------------- static-shape units


def test_bucket_multiple():
    assert hpu.bucket_multiple(64, True, 0) == 64
    assert hpu.bucket_multiple(64, False, 3) == 22  # widths 22, 44, 66: three buckets cover 64
    assert hpu.bucket_multiple(64, False, 0) is None
    with pytest.raises(UserError, match="--max_length"):
        hpu.bucket_multiple(None, True, 0)
    with pytest.raises(UserError, match="exceeds --max_length"):
        hpu.bucket_multiple(8, False, 9)


def test_fixed_length_rollouts_sample_the_same_episodes(embedded_root):
    """PPO's --pad_max generates past the stop token; cut after it, the episodes equal those of a run that
    stopped there (same seed): the fixed shape changes nothing the policy is trained on."""
    from rlhfkit import models, sampling

    tokenizer = models.load_tokenizer(str(embedded_root / "model"), padding_side="left")
    model = models.load_causal_lm(str(embedded_root / "model")).eval()
    texts = [sampling.format_prompt(tokenizer, p) for p in
             ["Describe the lamp.", "What do you think of the big red train?", "Describe the jacket.", "hi"]]
    ids = tokenizer(texts)["input_ids"]
    stop = [tokenizer.eos_token_id]
    outs = {}
    for fixed in (False, True):
        config = sampling.generation_config(40, stop, tokenizer.pad_token_id, temperature=0.7, fixed_length=fixed)
        queries, mask = sampling.left_pad(ids, tokenizer.pad_token_id, width=24 if fixed else None)
        torch.manual_seed(0)
        outs[fixed] = sampling.sample(model, tokenizer, texts, queries, mask, config, stop)
    assert outs[True].responses.shape == (4, 40) and outs[True].queries.shape == (4, 24)
    assert outs[False].response_texts == outs[True].response_texts
    assert outs[True].stopped.any()  # the comparison covers rows that stopped early
    short = outs[False].responses.shape[1]
    assert torch.equal(outs[False].response_mask, outs[True].response_mask[:, :short])
    assert outs[True].response_mask[:, short:].sum() == 0


# ------------------------------------------------------------------------------------------------- PPO


@pytest.mark.slow
def test_ppo_on_gaudi_fixed_shapes_graphs_and_flushes(embedded_root, tmp_path):
    """PPO with --pad_max and --use_hpu_graphs: every rollout one shape (prompts padded to --input_max_length,
    responses --output_max_length); generation replays two graphs (the prompt, then one decoding step); a flush
    after each backward and after each optimizer step: 3 steps x 2 epochs x 1 optimizer step of 2 micro-batches."""
    out = tmp_path / "ppo"
    result, records = run_standin(
        "ppo.py", *GAUDI, "--output_dir", str(out), "--reward_function", "toy", "--steps", "3", "--batch_size", "4",
        "--mini_batch_size", "2", "--gradient_accumulation_steps", "2", "--ppo_epochs", "2", "--output_max_length",
        "16", "--input_max_length", "48", "--pad_max", "--use_hpu_graphs", "--learning_rate", "1e-3",
        "--report_to", "none", "--bf16", "False", tmp_path=tmp_path)
    ok(result)
    assert records[0]["lazy_mode"] == "1"
    assert flushes(records) == ["flush_after_backward", "flush_after_backward", "flush_after_optimizer_step"] * 6
    (wrapped,) = events(records, "wrap_in_hpu_graph")
    assert wrapped["module"] == "LlamaForCausalLM"  # the transformers model under PEFT: its generate is graphed
    assert {tuple(r["shape"]) for r in events(records, "graph_call")} == {(4, 48), (4, 1)}
    summary = results_of(out)
    assert summary["rollout_shapes"] == [[4, 64]]
    # the reference (the adapter switched off) runs outside the graph: the policy moved away from it
    assert summary["final/objective/kl"] != 0.0


@pytest.mark.slow
def test_ppo_pad_max_needs_batched_generation(tmp_path):
    result, _ = run_standin("ppo.py", "--output_dir", str(tmp_path / "p"), "--reward_function", "toy", "--pad_max",
                            "--batched_gen", "False", tmp_path=tmp_path)
    assert_user_error(result, "--pad_max", "--batched_gen False", "drop one")


# ------------------------------------------------------------------------------------- generation, scoring


@pytest.mark.slow
def test_run_generation_with_hpu_graphs_gives_the_same_text(embedded_root, tmp_path):
    """Greedy text with graphs (prompts padded to the longest, static KV cache) equals the CPU run's; the graph
    sees two shapes per batch size (prompt, decoding step), not one per prompt length and step."""
    prompts = ["--prompt", "Describe the lamp.", "--prompt", "What do you think of the big red train?",
               "--prompt", "hi", "--prompt", "Describe the jacket."]
    common = [*prompts, "--batch_size", "2", "--max_new_tokens", "12"]
    plain, records = run_standin("run_generation.py", "--device", "cpu", *common, tmp_path=tmp_path)
    ok(plain)
    assert records == []  # never asked for Gaudi: the runtime is not loaded
    graphed, records = run_standin("run_generation.py", *GAUDI, "--use_hpu_graphs", *common, tmp_path=tmp_path)
    ok(graphed)
    assert graphed.stdout == plain.stdout
    assert len(events(records, "wrap_in_hpu_graph")) == 1
    shapes = {tuple(r["shape"]) for r in events(records, "graph_call")}
    assert len(shapes) == 2 and (2, 1) in shapes, shapes


@pytest.mark.slow
def test_compare_with_hpu_graphs(embedded_root, tmp_path):
    """The comparison on the stand-in: each model generates through its own graph, the reward model scores
    through one, rows padded to one width; the KL passes run outside the graphs (base vs itself: 0)."""
    from rlhfkit import models

    reward = tmp_path / "rm"
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(str(embedded_root / "model"))
    models.load_sequence_classifier(str(embedded_root / "model"), pad_token_id=tokenizer.pad_token_id) \
        .save_pretrained(reward, safe_serialization=True)
    tokenizer.save_pretrained(reward)
    out = tmp_path / "cmp"
    result, records = run_standin(
        "compare_base_vs_ppo.py", *GAUDI, "--use_hpu_graphs", "--bf16", "False", "--base_model",
        str(embedded_root / "model"), "--finetuned_model", str(embedded_root / "model"), "--reward_model", str(reward),
        "--num_samples", "6", "--batch_size", "4", "--max_new_tokens", "12", "--output_dir", str(out),
        tmp_path=tmp_path)
    ok(result)
    assert [r["module"] for r in events(records, "wrap_in_hpu_graph")] == ["LlamaForCausalLM", "LlamaModel",
                                                                            "LlamaForCausalLM"]
    scoring = {tuple(r["shape"]) for r in events(records, "graph_call") if r["module"] == "LlamaModel"}
    assert {width for _, width in scoring} == {256 + 12}  # --input_max_length + --max_new_tokens
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["win_rates"]["finetuned_vs_base"]["reward"]["ties"] == 6


# ------------------------------------------------------------------------------------------------ pipeline


def recording_python(tmp_path: Path) -> tuple[Path, Path]:
    """(an interpreter for the pipeline's PYTHON, the file it writes): it records each script command instead of
    running it, and runs anything else (-c, -m) with the real Python."""
    record = tmp_path / "commands.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1" in
  *.py) printf '%s\\n' "$*" >> {record}; exit 0 ;;
  -) cat >/dev/null; exit 0 ;;
  *) exec {sys.executable} "$@" ;;
esac
""")
    fake.chmod(0o755)
    return fake, record


@pytest.mark.parametrize("device", ["hpu", "auto"])
def test_pipeline_on_gaudi_passes_the_gaudi_settings(device, embedded_root, tmp_path):
    """ppo_pipeline_sanity.sh on Gaudi (DEVICE=hpu, or auto where habana_frameworks is installed): every stage
    gets lazy mode, the training stages length buckets, PPO fixed shapes and HPU graphs, generation and the
    comparison HPU graphs. The stages' scripts are recorded by a stand-in interpreter, not run (their Gaudi
    paths are tested above)."""
    fake, record = recording_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PT_HPU_LAZY_MODE"}
    env.update(PYTHON=str(fake), PYTHONPATH=str(STUBS), WORKDIR=str(tmp_path / "work"), LOG=str(tmp_path / "log"),
               PIPELINE_PROFILE="toy", DEVICE=device, WITH_DPO="1", WITH_KTO="1", WITH_GRPO="1")
    result = subprocess.run(["bash", str(REPO / "ppo_pipeline_sanity.sh")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    commands = {line.split()[0]: line.split() for line in record.read_text().splitlines()}
    assert set(commands) == {"sft.py", "merge_peft_adapter.py", "reward_modeling.py", "ppo.py", "run_generation.py",
                             "compare_base_vs_ppo.py", "dpo.py", "kto.py", "grpo.py"}
    for script, args in commands.items():
        if script != "merge_peft_adapter.py":
            assert args[args.index("--device") + 1] == "hpu" and "--use_lazy_mode" in args, script
    for script in ("sft.py", "reward_modeling.py", "dpo.py", "kto.py", "grpo.py"):
        assert commands[script][commands[script].index("--num_buckets") + 1] == "16"
    assert {"--pad_max", "--use_hpu_graphs"} <= set(commands["ppo.py"])
    # the toy profile's reward model is trained in full and used as it is (no merge of it)
    for script in ("ppo.py", "grpo.py"):  # GRPO trains against PPO's reward model
        args = commands[script]
        assert args[args.index("--reward_model_name") + 1] == str(tmp_path / "work" / "rm"), script
    assert "--use_peft" in commands["reward_modeling.py"]
    assert "--use_hpu_graphs" in commands["run_generation.py"] and "--use_hpu_graphs" in commands["compare_base_vs_ppo.py"]


def test_pipeline_off_gaudi_adds_no_gaudi_settings(embedded_root, tmp_path):
    fake, record = recording_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PT_HPU_LAZY_MODE", "PYTHONPATH")}
    env.update(PYTHON=str(fake), WORKDIR=str(tmp_path / "work"), LOG=str(tmp_path / "log"), PIPELINE_PROFILE="toy")
    result = subprocess.run(["bash", str(REPO / "ppo_pipeline_sanity.sh")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = record.read_text()
    assert "--device auto" in text
    for flag in ("--use_lazy_mode", "--num_buckets", "--pad_max", "--use_hpu_graphs"):
        assert flag not in text
