"""Atomic writes: nothing half-written that looks complete.

A file is written to a temporary sibling, flushed to disk, then renamed over its target (rename is atomic
on POSIX). A model folder is written to a staging folder and its files moved in one by one with the config
files *last*: a folder without ``config.json`` / ``adapter_config.json`` is not loadable, so a crash in the
middle never leaves something that ``from_pretrained`` would take for a finished model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

ADAPTER_CONFIG = "adapter_config.json"
LAST_FILES = ("config.json", ADAPTER_CONFIG)
STALE_ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin")


def write_json(path: str, payload, indent: int = 2) -> None:
    """Write JSON atomically (temp file in the same folder, fsync, rename)."""
    write_text(path, json.dumps(payload, indent=indent, sort_keys=True, default=str) + "\n")


def write_text(path: str, text: str) -> None:
    """Write text atomically (temp file in the same folder, fsync, rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, payload: bytes) -> None:
    """Write bytes atomically (temp file in the same folder, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; results are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def new_dir(final_dir: str, replace: bool = False):
    """A whole folder written aside and renamed into place: yields a staging sibling of ``final_dir`` (an ordinary
    folder's permissions); on success it becomes ``final_dir`` in one rename. ``replace``: an existing
    ``final_dir`` is swapped out, then removed; otherwise an existing one makes the rename fail (``OSError``).
    Nothing is left behind on failure."""
    final_dir = os.path.abspath(final_dir)
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.saving-", dir=parent)
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
        yield staging
        if replace and os.path.exists(final_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.old-", dir=parent)
            os.replace(final_dir, os.path.join(old, "previous"))
            os.replace(staging, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final_dir: str, publish_files: bool = True):
    """A temporary folder beside ``final_dir`` to save into; on success its files are published into
    ``final_dir`` (created if needed, other contents kept), config files last. Removed on failure.
    ``publish_files=False`` (a process other than the main one, which must still take part in a gathered save)
    only removes it."""
    final_dir = os.path.abspath(final_dir)
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.saving-", dir=parent)
    try:
        yield staging
        if publish_files:
            publish(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: str, final_dir: str) -> None:
    """Move every file of ``staging`` into ``final_dir``, the files named in :data:`LAST_FILES` last."""
    os.makedirs(final_dir, exist_ok=True)
    if os.path.exists(os.path.join(staging, "config.json")) and not os.path.exists(os.path.join(staging, ADAPTER_CONFIG)):
        # a full model over an older adapter: loaders look for adapter_config.json first and would load the stale
        # adapter onto its base instead of the new weights
        for name in STALE_ADAPTER_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(final_dir, name))
    for name in LAST_FILES:  # an older config must not vouch for new, partly moved weights
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(os.path.join(staging, name)):
                os.unlink(os.path.join(final_dir, name))
    names = sorted(os.listdir(staging), key=lambda n: (n in LAST_FILES, n))
    for name in names:
        source, target = os.path.join(staging, name), os.path.join(final_dir, name)
        if os.path.isdir(source):
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(source, target)
        else:
            _fsync_file(source)
            os.replace(source, target)
    _fsync_dir(final_dir)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
