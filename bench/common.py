#!/usr/bin/env python
"""What every benchmark program shares: progress lines, running a command (its output to a log, its failure with
the log's end), and measuring one run's wall time and peak memory.

    python bench/common.py --measure-child RESULT LOG -- CMD...    # wall time + peak RSS of CMD's process tree
    python bench/common.py --cuda-peak RESULT -- SCRIPT ARGS...    # torch.cuda.max_memory_allocated of SCRIPT

Both wrappers run in their own process, so the figures are those of the one run (RUSAGE_CHILDREN of a fresh
parent), never the high-water mark of an earlier run in the same benchmark.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)


def machine_line(out: dict, note: str = "") -> str:
    """The Markdown report's machine line from a result's ``machine`` (bench/machine.describe) and ``versions``."""
    described, versions = out["machine"], out["versions"]
    return (f"Machine: {described.get('cpu_model')}, {described.get('usable_cores')} usable cores, "
            f"{(described.get('memory_bytes') or 0) / 2**30:.0f} GiB; torch {versions.get('torch')}, TRL "
            f"{versions.get('trl')}. {note}").rstrip()


def write_aside(path: str, text: str) -> None:
    """``text`` into ``path``, written aside and renamed (the toolkit's ``rlhfkit.io.write_text``): a reader never
    sees half a file."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rlhfkit.io import write_text

    write_text(path, text)


def say(message: str, tag: str = "bench") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _tail(log: str, lines: int) -> str:
    with open(log, encoding="utf-8", errors="replace") as handle:
        return "\n".join(handle.read().strip().splitlines()[-lines:])


def run(cmd: list[str], what: str, log: str | None = None, env: dict | None = None, tag: str = "bench") -> float:
    """Run ``cmd`` in the repository (output to ``log``, else to this terminal); returns its wall time. A failure
    stops the benchmark with the command and the end of its log."""
    say(f"{what}: {shlex.join(cmd)}", tag)
    started = time.perf_counter()
    if log is None:
        code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    else:
        with open(log, "w", encoding="utf-8") as handle:
            code = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        where = f"; log {log}:\n{_tail(log, 12)}" if log else ""
        raise SystemExit(f"error: {what} failed (exit {code}): {shlex.join(cmd)}{where}")
    return time.perf_counter() - started


def measured(cmd: list[str], what: str, log: str, env: dict | None = None, echo: bool = True,
             tag: str = "bench") -> dict:
    """Run ``cmd`` under the ``--measure-child`` wrapper (its output to ``log``, and to this terminal when ``echo``);
    returns the wrapper's figures (``wall_seconds``, ``max_rss_bytes``, ...) plus ``log``."""
    result = log + ".process.json"
    wrapper = [sys.executable, os.path.abspath(__file__), "--measure-child", result, log, "--", *cmd]
    say(f"{what}: {shlex.join(cmd)}", tag)
    code = subprocess.run(wrapper, cwd=REPO, env=env, stdout=None if echo else subprocess.DEVNULL).returncode
    if not os.path.isfile(result):
        raise SystemExit(f"error: the measuring wrapper of {what} failed (exit {code}): {shlex.join(cmd)}")
    with open(result, encoding="utf-8") as handle:
        figures = json.load(handle)
    if code != 0 or figures["returncode"] != 0:
        raise SystemExit(f"error: {what} failed (exit {figures['returncode']}): {shlex.join(cmd)}; log {log}:\n"
                         + _tail(log, 12))
    figures["log"] = log
    return figures


# ---------------------------------------------------------------------------------------------- the wrappers
def measure_child(argv: list[str]) -> int:
    """``--measure-child RESULT LOG -- CMD...``: run CMD, tee its output to LOG, then write its wall time and the
    peak RSS of its process tree (this wrapper's RUSAGE_CHILDREN: only this run) to RESULT."""
    result_path, log_path, sep, *cmd = argv
    if sep != "--" or not cmd:
        raise SystemExit("usage: --measure-child RESULT LOG -- CMD...")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                errors="replace")
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        code = proc.wait()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump({"returncode": code, "wall_seconds": wall, "max_rss_bytes": usage.ru_maxrss * 1024,
                   "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime,
                   "load_average_before": load_before, "load_average_after": os.getloadavg(), "command": cmd},
                  handle, indent=1)
    return code


def run_with_cuda_peak(argv: list[str]) -> int:
    """``--cuda-peak RESULT -- SCRIPT ARGS...``: run a Python script in this process (for ``ppo.py``, which does
    not report GPU memory itself) and write ``torch.cuda.max_memory_allocated`` to RESULT when it ends."""
    import runpy

    result_path, sep, script, *args = argv
    if sep != "--":
        raise SystemExit("usage: --cuda-peak RESULT -- SCRIPT ARGS...")
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        with open(result_path, "w", encoding="utf-8") as handle:
            json.dump({"cuda_max_memory_allocated": peak,
                       "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, handle)
    return code


if __name__ == "__main__":
    wrappers = {"--measure-child": measure_child, "--cuda-peak": run_with_cuda_peak}
    if len(sys.argv) < 2 or sys.argv[1] not in wrappers:
        raise SystemExit(__doc__)
    sys.exit(wrappers[sys.argv[1]](sys.argv[2:]))
