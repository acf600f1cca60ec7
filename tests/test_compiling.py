"""sft.py's automatic torch.compile (rlhfkit/compiling.py): where it applies, the decision from the timed first
steps, the callback's one decision per run, and (slow) a real Trainer compiled in place mid-run that keeps training
the same numbers as an uncompiled one."""

from __future__ import annotations

import types

import pytest
import torch

from rlhfkit import compiling
from rlhfkit.device import DeviceInfo


def _args(world_size=1, fsdp="", deepspeed=None):
    return types.SimpleNamespace(world_size=world_size, fsdp=fsdp, deepspeed=deepspeed)


def test_should_compile_projects_the_steps_left_against_the_threshold(monkeypatch):
    monkeypatch.setattr(compiling, "MIN_REMAINING_SECONDS", 100.0)
    assert compiling.should_compile([1.0, 3.0], 50) == (True, 100.0)  # mean 2 s x 50 steps: exactly the threshold
    assert compiling.should_compile([1.0, 3.0], 49) == (False, 98.0)
    assert compiling.should_compile([], 1000) == (False, 0.0)
    assert compiling.should_compile([5.0], 0) == (False, 0.0)


def test_it_applies_on_cpu_in_one_process_with_a_compiler():
    cpu = DeviceInfo(type="cpu")
    assert compiling.unavailable(cpu, 1, False) is None  # this machine has g++
    assert "CPU only" in compiling.unavailable(DeviceInfo(type="cuda"), 1, False)
    assert "one process" in compiling.unavailable(cpu, 2, False)
    assert "one process" in compiling.unavailable(cpu, 1, True)
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # inductor's own override (monkeypatch would delete it)
        assert "no C++ compiler" in compiling.unavailable(cpu, 1, False)
    assert compiling.unavailable(cpu, 1, False) is None


def test_an_explicit_setting_is_reported_and_adds_no_callback():
    trainer = types.SimpleNamespace(add_callback=lambda cb: pytest.fail("no callback expected"))
    assert compiling.auto_compile(trainer, _args(), DeviceInfo(type="cpu"), True)() == {"torch_compile": "on"}
    assert compiling.auto_compile(trainer, _args(), DeviceInfo(type="cpu"), False)() == {"torch_compile": "off"}
    off = compiling.auto_compile(trainer, _args(world_size=2), DeviceInfo(type="cpu"), None)()
    assert off["torch_compile"].startswith("auto: off (automatic compiling applies to one process")


class _Model:
    def __init__(self):
        self.compiled = 0

    def compile(self):
        self.compiled += 1


def _run_steps(callback, state, steps: int):
    for _ in range(steps):
        callback.on_step_begin(None, state, None)
        state.global_step += 1
        callback.on_step_end(None, state, None)


@pytest.mark.parametrize("threshold, expected", [(0.0, "on"), (1e9, "off")])
def test_the_callback_decides_once_after_the_trial_steps(monkeypatch, threshold, expected):
    monkeypatch.setattr(compiling, "MIN_REMAINING_SECONDS", threshold)
    added = []
    trainer = types.SimpleNamespace(model=_Model(), add_callback=added.append)
    decision = compiling.auto_compile(trainer, _args(), DeviceInfo(type="cpu"), None)
    (callback,) = added
    state = types.SimpleNamespace(max_steps=100, global_step=0)
    _run_steps(callback, state, compiling.TRIAL_STEPS - 1)
    assert decision()["torch_compile"].startswith("auto: undecided") and trainer.model.compiled == 0
    _run_steps(callback, state, 10)  # the third step decides; later steps change nothing
    assert decision()["torch_compile"] == f"auto: {expected} after step {compiling.TRIAL_STEPS}"
    assert decision()["torch_compile_projected_seconds"] >= 0
    assert trainer.model.compiled == (expected == "on")
    assert len(callback.seconds) == compiling.TRIAL_STEPS


@pytest.mark.slow
def test_a_trainer_compiled_in_place_mid_run_trains_the_same_numbers(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    monkeypatch.setattr(compiling, "MIN_REMAINING_SECONDS", 0.0)

    def train(auto: bool) -> tuple[list[float], object]:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64)
        model = LlamaForCausalLM(config)
        rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(1, 64, (48, 16)).tolist()]
        args = TrainingArguments(output_dir=str(tmp_path / str(auto)), max_steps=8, per_device_train_batch_size=6,
                                 learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        decision = compiling.auto_compile(trainer, args, DeviceInfo(type="cpu"), None if auto else False)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        return losses, (decision(), model)

    eager, _ = train(auto=False)
    compiled, (decision, model) = train(auto=True)
    assert decision["torch_compile"] == f"auto: on after step {compiling.TRIAL_STEPS}"
    assert model._compiled_call_impl is not None  # the steps after the decision went through the compiled module
    assert len(compiled) == len(eager) == 8
    assert compiled[-1] < compiled[0]  # it kept learning
    assert compiled == pytest.approx(eager, rel=1e-3)
