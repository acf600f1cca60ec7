"""Atomic saves: a model folder is published with its config last, and a new full model replaces a stale adapter."""

from __future__ import annotations

import pytest

from rlhfkit import io


def test_full_model_over_an_old_adapter_removes_the_adapter(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "notes.txt"):
        (out / name).write_text("old")
    with io.staging_dir(str(out)) as staging:
        for name in ("config.json", "model.safetensors"):
            (tmp_path / "x").write_text("new")
            (tmp_path / "x").rename(f"{staging}/{name}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (out / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging folder gone


def test_adapter_over_an_adapter_keeps_other_files_and_a_failed_save_publishes_nothing(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "adapter_config.json").write_text("old")
    with pytest.raises(RuntimeError), io.staging_dir(str(out)) as staging:
        (tmp_path / "x").write_text("half")
        (tmp_path / "x").rename(f"{staging}/adapter_model.safetensors")
        raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]
    assert (out / "adapter_config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_json_is_atomic_and_readable(tmp_path):
    path = tmp_path / "sub" / "r.json"
    io.write_json(str(path), {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
