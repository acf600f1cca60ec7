"""Checkpoints, one implementation for the Trainer scripts (sft, reward_modeling, dpo, kto) and the PPO engine:
which ``checkpoint-N`` folder is the newest complete one, what ``--resume_from_checkpoint`` names, publishing a
checkpoint written aside, and keeping the newest ``--save_total_limit``.

A checkpoint is complete when its marker file exists (the Trainer's ``trainer_state.json``, PPO's
``ppo_state.json``): each writer writes it last, into a staging folder renamed into place when done.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

NEWEST = ("last", "true", "latest")  # --resume_from_checkpoint values that mean the newest complete checkpoint


def numbered(output_dir: str) -> list[tuple[int, str]]:
    """``(N, path)`` of every ``checkpoint-N`` folder in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(output_dir, name))]
    return sorted(found)


def newest_complete(output_dir: str, marker: str) -> str | None:
    """The newest ``checkpoint-N`` holding ``marker``; one cut short by a crash lacks it and is passed over, with
    a warning."""
    complete = []
    for step, path in numbered(output_dir):
        if os.path.isfile(os.path.join(path, marker)):
            complete.append((step, path))
        else:
            logger.warning("%s is incomplete (no %s): not resuming from it", path, marker)
    return complete[-1][1] if complete else None


def resolve(value: str | None, output_dir: str, marker: str) -> str | None:
    """``--resume_from_checkpoint`` as a folder: None, a path, or ``last`` / ``true`` / ``latest`` for the newest
    complete checkpoint in ``output_dir``. A missing one is an error naming the fix."""
    if value is None:
        return None
    if value.lower() in NEWEST:
        last = newest_complete(output_dir, marker)
        if last is None:
            raise UserError(f"--resume_from_checkpoint {value}: no complete checkpoint-* folder in {output_dir}")
        return last
    if not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint {value} is not a folder: pass a checkpoint-* folder or 'last'")
    return value


def publish(staging: str, final: str) -> None:
    """A checkpoint written into ``staging`` becomes ``final`` in one rename (an older one of that name goes)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def rotate(output_dir: str, keep: int | None) -> None:
    """Remove all but the newest ``keep`` checkpoints (None or 0: keep every one)."""
    if not keep:
        return
    for _, path in numbered(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
