"""Flag names from the tools our users come from, and what they stand for: one table, every use logged.

A user who passes TRL's ``--response_length`` or optimum-habana's ``--use_habana`` gets what that flag means
there, one log line saying which of our flags it set, and an error when the two are given with different values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    target: str  # our flag
    source: str  # whose name it is
    value: object = None  # the value it gives the target (a switch); None: the alias's own value


ALIASES = {
    "response_length": Alias("output_max_length", "TRL's name"),
    "total_episodes": Alias("steps", "TRL's name"),  # episodes in all: PPOArguments.resolve_steps divides
    "use_habana": Alias("device", "optimum-habana's flag", value="hpu"),
}


def resolve(name: str, given, current, default):
    """The target's value once alias ``name`` (given as ``given``; None or False: not given) is applied to a
    target currently ``current`` whose default is ``default``. Logs the mapping; a target set to another value
    is an error naming both flags."""
    alias = ALIASES[name]
    if given is None or given is False:
        return current
    value = given if alias.value is None else alias.value
    if current != value and current != default:
        shown = "" if alias.value is not None else f" {given}"
        raise UserError(f"--{name}{shown} and --{alias.target} {current} disagree: --{name} is {alias.source} for "
                        f"--{alias.target} {value}; give one of them")
    say(name, given, value)
    return value


def say(name: str, given, value) -> None:
    """The log line for an alias that took effect."""
    alias = ALIASES[name]
    shown = "" if alias.value is not None else f" {given}"
    logger.info("--%s%s (%s) sets --%s %s", name, shown, alias.source, alias.target, value)
