"""What a long run meets on a shared cluster, handled the same way by every training script.

* **A stop request** (SIGTERM from a scheduler, Ctrl-C): the current step finishes, a resumable checkpoint is
  saved, and the run exits with 128 + the signal number and a message saying how to resume. A second signal
  stops at once. Under several processes the request is shared, so every process stops after the same step.
* **A loss that turns NaN or infinite**: the gradients of that batch are dropped (the optimizer step does
  nothing) up to ``--max_bad_batches`` times; one more stops the run with the step named, no final model
  saved, and the last good checkpoint left as it was.
* **The output folder**: a non-empty one is refused unless ``--overwrite_output_dir`` or resuming (the Hugging
  Face convention; nothing is ever deleted), and an unwritable one or a disk too small for the model and one
  checkpoint is refused before any training.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from dataclasses import dataclass, field

from rlhfkit.errors import RunStopped, UserError

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class RunArguments:
    """Flags every training script shares for its output folder and for faults."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir (files there are replaced, nothing is deleted)."},
    )
    max_bad_batches: int = field(
        default=0,
        metadata={"help": "Batches with a NaN/inf loss to skip before stopping (0: stop at the first one)."},
    )


class StopRequest:
    """SIGTERM / SIGINT set a flag that the training loop reads between steps (the first time); a second
    signal raises ``KeyboardInterrupt`` at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (a notebook worker): no graceful stop there
                logger.debug("cannot install a handler for %s outside the main thread", signum)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.uninstall()
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing the current step, then saving a checkpoint (send it again to stop "
                       "at once)", signal.Signals(signum).name)

    def requested(self, distributed: bool = True) -> bool:
        """Whether any process was asked to stop (an all-reduce when several processes run)."""
        local = self.signum is not None
        if not distributed:
            return local
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return local
        import torch

        flag = torch.tensor([1.0 if local else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled: stop with it
        return flag.item() > 0

    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name


def gradients_finite(parameters) -> bool:
    """Whether every gradient is finite (one reduction: a NaN or inf anywhere makes the sum non-finite)."""
    import torch

    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = any(hasattr(g, "to_local") for g in grads)  # FSDP2: each process holds a shard (a DTensor)
    sums = [(g.to_local() if hasattr(g, "to_local") else g).detach().float().sum() for g in grads]
    total = torch.stack(sums).sum() if sums else torch.zeros(())
    if sharded:  # every process must decide the same: the sum over all shards
        import torch.distributed as dist

        dist.all_reduce(total)
    return bool(torch.isfinite(total).item())


def drop_gradients(parameters) -> None:
    """Drop the gradients, so the optimizer step that follows leaves these parameters unchanged."""
    for p in parameters:
        p.grad = None


class BadBatches:
    """Counts batches with non-finite gradients; :meth:`check` drops their gradients and says whether to stop."""

    def __init__(self, limit: int):
        self.limit, self.seen, self.stopped_at = limit, 0, None

    def check(self, parameters, step: int) -> bool:
        """True when the run must stop (more than ``limit`` bad batches); drops the bad batch's gradients."""
        parameters = list(parameters)
        if gradients_finite(parameters):
            return False
        drop_gradients(parameters)
        return self.count_skipped(step)

    def count_skipped(self, step: int) -> bool:
        """Count one bad batch already kept from the optimizer (DeepSpeed: its backward never ran); True when the
        run must stop."""
        self.seen += 1
        if self.seen > self.limit:
            self.stopped_at = step
            return True
        logger.warning("step %d: the loss is NaN or infinite: batch skipped (%d of --max_bad_batches %d)", step,
                       self.seen, self.limit)
        return False

    def message(self, checkpoint: str | None) -> str:
        kept = (f"the last good checkpoint is {checkpoint} (resume with --resume_from_checkpoint {checkpoint})"
                if checkpoint else "no checkpoint was saved before it")
        return (f"the loss became NaN or infinite at step {self.stopped_at} ({self.seen} bad batch(es), "
                f"--max_bad_batches {self.limit}); no final model was saved and {kept}: lower --learning_rate, "
                "check the data, or raise --max_bad_batches to skip such batches")


def stopped_by_signal(stop: StopRequest, step: int, checkpoint: str | None) -> RunStopped:
    """The exception that ends a run stopped by a signal, after its checkpoint was saved."""
    kept = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be saved"
    return RunStopped(f"stopped by {stop.name()} after step {step}: {kept}; rerun the same command with "
                      "--resume_from_checkpoint last to continue", stop.exit_code(), prefix="stopped")


def diverged(bad: BadBatches, checkpoint: str | None) -> RunStopped:
    """The exception that ends a run whose loss stayed NaN/inf for more than ``--max_bad_batches`` batches."""
    return RunStopped(bad.message(checkpoint), 1)


# --------------------------------------------------------------------------------------------- output folder
def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool | None, flag: str = "--output_dir") -> None:
    """Refuse a non-empty folder (unless overwriting or resuming; ``resuming`` None: the script cannot resume), a file
    in its place, or an unwritable place. ``flag`` names the folder's flag in the messages."""
    if os.path.isfile(output_dir):
        raise UserError(f"{flag} {output_dir} is a file: pass a folder")
    if os.path.isdir(output_dir) and any(not name.startswith(".") for name in os.listdir(output_dir)):
        if not (overwrite or resuming):
            resume = "" if resuming is None else ", --resume_from_checkpoint last to continue a run there"
            raise UserError(f"{flag} {output_dir} exists and is not empty: pass --overwrite_output_dir to write into "
                            f"it{resume}, or choose another folder")
    target = _existing_ancestor(output_dir)
    if not os.path.isdir(target):
        raise UserError(f"cannot create {flag} {output_dir}: {target} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {flag} {output_dir} ({target} is not writable): choose another "
                        "folder or fix its permissions")


def check_disk_space(output_dir: str, needed_bytes: int) -> None:
    """Refuse a disk with less free space than ``needed_bytes`` (the model plus one checkpoint)."""
    free = shutil.disk_usage(_existing_ancestor(output_dir)).free
    if free < needed_bytes:
        raise UserError(f"not enough disk space for --output_dir {output_dir}: about {needed_bytes / 2**20:,.0f} MiB "
                        f"needed for the model and a checkpoint, {free / 2**20:,.0f} MiB free: free some space or "
                        "choose another folder")


def needed_bytes(model, save_optimizer: bool = True) -> int:
    """A disk estimate: every parameter once (the saved model), plus the trainable ones with AdamW's two
    moments in float32 (a checkpoint)."""
    def numel(p):  # a parameter DeepSpeed ZeRO-3 holds partitioned is empty here: its full size
        return getattr(p, "ds_numel", p.numel())

    total = sum(numel(p) * p.element_size() for p in model.parameters())
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return total + (trainable * 4 * 3 if save_optimizer else 0)
