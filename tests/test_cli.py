"""Argument parsing (dataclass flags plus --config file.yaml) and the one-line user error exit."""

from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import dataclass, field

import pytest

from rlhfkit.cli import dataclass_to_dict, make_parser
from rlhfkit.device import DeviceArguments
from rlhfkit.errors import USAGE_EXIT_CODE, UserError, cli_entry

ENV_VAR = "RLHFKIT_TEST_FROM_CONFIG"


@dataclass
class ScriptArguments:
    model_name: str = field(default="base", metadata={"help": "model"})
    learning_rate: float = 1e-3
    steps: int = 10
    use_peft: bool = False
    tags: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class RequiredArguments:
    output_dir: str
    steps: int = 1


def _parse(argv, *types):
    return make_parser(types or (ScriptArguments, DeviceArguments)).parse_args_and_config(argv)


def _yaml(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


FULL = """\
    model_name: tiny
    learning_rate: 0.5
    steps: 3
    use_peft: true
    tags: [x, y]
    device: cpu
"""


def test_no_config_gives_dataclass_defaults():
    script, dev = _parse([])
    assert script == ScriptArguments()
    assert dev == DeviceArguments()


def test_config_sets_defaults(tmp_path):
    outputs = _parse(["--config", _yaml(tmp_path, FULL)])
    assert len(outputs) == 2  # the dataclasses only, not the namespace holding --config
    script, dev = outputs
    assert script == ScriptArguments(model_name="tiny", learning_rate=0.5, steps=3, use_peft=True, tags=["x", "y"])
    assert isinstance(script.learning_rate, float) and isinstance(script.steps, int)
    assert dev == DeviceArguments(device="cpu")


@pytest.mark.parametrize("position", ["before", "after", "equals"])
def test_flags_override_config(tmp_path, position):
    path = _yaml(tmp_path, FULL)
    flags = ["--steps", "7", "--tags", "z", "--device", "auto"]
    if position == "before":
        argv = [*flags, "--config", path]
    elif position == "after":
        argv = ["--config", path, *flags]
    else:
        argv = [f"--config={path}", *flags]
    script, dev = _parse(argv)
    assert script.steps == 7
    assert script.tags == ["z"]
    assert dev.device == "auto"
    # what the command line does not mention still comes from the file
    assert script.model_name == "tiny"
    assert script.learning_rate == 0.5
    assert script.use_peft is True


def test_config_run_equals_flag_run(tmp_path):
    from_yaml = _parse(["--config", _yaml(tmp_path, FULL)])
    from_flags = _parse(
        ["--model_name", "tiny", "--learning_rate", "0.5", "--steps", "3", "--use_peft", "--tags", "x", "y",
         "--device", "cpu"]
    )
    assert from_yaml == from_flags
    assert dataclass_to_dict(from_yaml[0]) == dataclass_to_dict(from_flags[0])
    assert from_yaml[0] != ScriptArguments()


def test_list_field_from_yaml(tmp_path):
    (script,) = _parse(["--config", _yaml(tmp_path, "tags:\n  - one\n  - two\n  - three\n")], ScriptArguments)
    assert script.tags == ["one", "two", "three"]
    (script,) = _parse(["--config", _yaml(tmp_path, "tags: [solo]\n", "b.yaml")], ScriptArguments)
    assert script.tags == ["solo"]


def test_required_flag_from_yaml(tmp_path):
    (args,) = _parse(["--config", _yaml(tmp_path, "output_dir: runs/x\n")], RequiredArguments)
    assert args == RequiredArguments(output_dir="runs/x", steps=1)
    (args,) = _parse(["--config", _yaml(tmp_path, "output_dir: runs/x\n"), "--output_dir", "runs/y"], RequiredArguments)
    assert args.output_dir == "runs/y"
    with pytest.raises(SystemExit):  # still required when the file does not set it
        _parse(["--config", _yaml(tmp_path, "steps: 2\n", "b.yaml")], RequiredArguments)


def test_empty_config_changes_nothing(tmp_path):
    assert _parse(["--config", _yaml(tmp_path, "")]) == _parse([])
    assert _parse(["--config", _yaml(tmp_path, "# only a comment\n", "b.yaml")]) == _parse([])


def test_unknown_key_names_the_key(tmp_path):
    path = _yaml(tmp_path, "learning_rate: 0.1\nlerning_rate: 0.2\nzzz_flag: 1\n")
    with pytest.raises(UserError) as err:
        _parse(["--config", path])
    message = str(err.value)
    assert "lerning_rate" in message
    assert "zzz_flag" in message
    assert "learning_rate" not in message  # a known key is not reported
    assert path in message


def test_malformed_yaml(tmp_path):
    path = _yaml(tmp_path, "steps: 3\ntags: [x, y\nmodel_name: tiny\n")
    with pytest.raises(UserError) as err:
        _parse(["--config", path])
    assert "not valid YAML" in str(err.value)
    assert path in str(err.value)
    assert "line " in str(err.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="must be a YAML mapping"):
        _parse(["--config", _yaml(tmp_path, "- steps\n- 3\n")])


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(UserError) as err:
        _parse(["--config", path])
    assert path in str(err.value)
    assert "does not exist" in str(err.value)


def test_config_flag_without_a_path():
    with pytest.raises(UserError, match="--config needs a path"):
        _parse(["--steps", "2", "--config"])


def test_env_mapping_sets_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "placeholder")
    monkeypatch.delenv(ENV_VAR)  # recorded, so the value the config sets is removed again after the test
    path = _yaml(tmp_path, f"env:\n  {ENV_VAR}: 42\nsteps: 2\n")
    (script,) = _parse(["--config", path], ScriptArguments)
    assert os.environ[ENV_VAR] == "42"
    assert script.steps == 2


def test_env_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="'env' must be a mapping"):
        _parse(["--config", _yaml(tmp_path, "env: [A, B]\n")])


# --- cli_entry ---


def test_cli_entry_user_error_is_one_line_and_exit_2(capsys):
    @cli_entry
    def main():
        raise UserError("the dataset is empty:\npoint --dataset_name at a file with rows")

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == USAGE_EXIT_CODE == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert lines[0] == "error: the dataset is empty: point --dataset_name at a file with rows"
    assert "Traceback" not in captured.err
    logging.getLogger("rlhfkit.test").info("logging still works after cli_entry shut it down")


def test_cli_entry_passes_results_and_other_errors_through(capsys):
    @cli_entry
    def ok(x, y=1):
        return x + y

    @cli_entry
    def bug():
        raise ValueError("a bug keeps its traceback")

    assert ok(2, y=3) == 5
    assert ok.__name__ == "ok"
    with pytest.raises(ValueError, match="a bug keeps its traceback"):
        bug()
    assert capsys.readouterr().err == ""


def test_cli_entry_keyboard_interrupt(capsys):
    @cli_entry
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["error: interrupted by the user"]


SCRIPTS = ("sft.py", "reward_modeling.py", "dpo.py", "kto.py", "ppo.py", "grpo.py", "rloo.py", "merge_peft_adapter.py",
           "run_generation.py", "compare_base_vs_ppo.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_its_help(script):
    """--help works (a help text with a bare '%' once crashed argparse's formatter) and lists --config."""
    from conftest import REPO, run_script

    result = run_script(str(REPO / script), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--config FILE.yaml" in result.stdout
    assert "Traceback" not in result.stderr


def test_percent_in_a_help_text_is_shown_literally(capsys):
    @dataclass
    class Shares:
        share: str = field(default="5%", metadata={"help": "a count (200) or a share (5%)"})

    with pytest.raises(SystemExit):
        make_parser((Shares,)).parse_args_and_config(["--help"])
    assert "a share (5%)" in capsys.readouterr().out


@pytest.mark.parametrize("fails", [False, True])
def test_script_cli_destroys_the_process_group_on_the_way_out(tmp_path, fails):
    """A script's entry tears down the process group its run started (here a 1-process gloo group), whether the
    run finished or failed; torch's documented shutdown, instead of the interpreter's exit order."""
    import torch.distributed as dist

    from rlhfkit.cli import script_cli

    def main(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()
        if fails:
            raise UserError("bad input")
        return "done"

    cli = script_cli(lambda: make_parser((ScriptArguments,)), main)
    if fails:
        with pytest.raises(SystemExit):
            cli([])
    else:
        assert cli([]) == "done"
    assert not dist.is_initialized()


# a process that ends with exit_without_finalizing: what must still happen (threads joined, atexit run, buffered
# output flushed) and what must not (the interpreter's finalization: an object's __del__ at shutdown)
ENDING = """
import atexit, sys, threading, time
from rlhfkit.sharding import exit_without_finalizing

class Finalized:
    def __del__(self):
        print("finalized", flush=True)

keep = Finalized()
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
sys.stdout.write("buffered, no newline")
if sys.argv[1] == "skip":
    exit_without_finalizing(0)
    print("not reached")
"""


@pytest.mark.parametrize("how", ["skip", "normal"])
def test_exit_without_finalizing_joins_threads_runs_atexit_flushes_and_skips_finalization(how):
    """A finished process of a multi-process run exits without finalizing the interpreter (gloo's worker threads
    abort a finalizing one): the Python threads still running finish, atexit functions run, stdout is flushed,
    and nothing is finalized; "normal" is the control, where the same program's object is finalized at exit."""
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, "-c", ENDING, how], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "buffered, no newline" in result.stdout
    assert "thread finished" in result.stdout and "atexit ran" in result.stdout
    assert result.stdout.index("thread finished") < result.stdout.index("atexit ran")
    assert "not reached" not in result.stdout
    assert ("finalized" in result.stdout) == (how == "normal"), result.stdout


# two processes in one gloo group, each through a script's entry (script_cli)
TWO_PROCESS_CLI = """
import sys
from dataclasses import dataclass
import torch
import torch.distributed as dist
from rlhfkit.cli import make_parser, script_cli

@dataclass
class Arguments:
    steps: int = 1

def main(args):
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=int(sys.argv[1]), world_size=2)
    gathered = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(gathered, torch.ones(1) * dist.get_rank())
    print("gathered", [int(t) for t in gathered], flush=True)
    return "done"

print("returned", script_cli(lambda: make_parser((Arguments,)), main)([]), flush=True)
"""


def test_a_finished_multi_process_run_ends_through_the_exit_without_finalizing(tmp_path):
    """Both processes of a 2-process group run a script's entry to the end: each exits 0 from inside the entry
    (after the barrier and the group's destruction) instead of returning into an interpreter that finalizes."""
    import subprocess
    import sys

    from conftest import REPO

    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_CLI, str(rank), str(store)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "gathered [0, 1]" in out, out
        assert "returned" not in out, out
