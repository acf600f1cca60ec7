"""One way for every script to refuse bad input: a one-line message, a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Exit status of a run refused for bad input (argparse uses 2 for bad flags as well).
USAGE_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do about it.

    Scripts raise it anywhere; :func:`cli_entry` turns it into ``error: <message>`` on stderr and exit code 2.
    """


class RunStopped(Exception):
    """A run that stopped early on purpose (a stop signal, a diverged loss): the message says what was kept and
    how to go on; :func:`cli_entry` prints it on one line and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int, prefix: str = "error"):
        super().__init__(message)
        self.exit_code, self.prefix = exit_code, prefix


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's ``main`` so a :class:`UserError` ends the process cleanly.

    Anything else (a bug, an out-of-memory) keeps its traceback: that is a report for us, not for the user.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            logging.shutdown()
            message = " ".join(str(err).split("\n")).strip()
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT_CODE) from None
        except RunStopped as err:
            logging.shutdown()
            print(f"{err.prefix}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            logging.shutdown()
            what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                    errno.EROFS: "the file system is read-only"}[err.errno]
            print(f"error: {what} ({err.filename or 'while writing'}): free space or choose another folder; "
                  "what was being written was not published, earlier results are intact", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("error: interrupted by the user", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper
