"""Argument parsing shared by the scripts: dataclass flags (``HfArgumentParser``) plus ``--config file.yaml``.

The YAML file sets defaults; flags on the command line override them (TRL's ``TrlParser`` convention). Unlike
``TrlParser``, a key the script does not know is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

from rlhfkit.errors import UserError, cli_entry


def make_parser(dataclass_types: Iterable[type], description: str | None = None, prepare=None, defaults=None):
    """Build the parser of a script from its argument dataclasses.

    ``defaults`` replaces dataclass defaults (a YAML config and the command line still override them).
    ``prepare(namespace)`` runs after parsing and before the dataclasses are built, so it can settle values
    their validation depends on (the device switch sets ``use_cpu`` and precision this way).
    """
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def parse_args_and_config(self, args: Iterable[str] | None = None) -> tuple[Any, ...]:
            argv = list(sys.argv[1:] if args is None else args)
            config_path = _pop_config_flag(argv)
            if config_path is not None:
                config = _read_config(config_path, {action.dest for action in self._actions})
                self.set_defaults(**config)
                for action in self._actions:  # a required flag that the YAML file sets is required no more
                    if action.dest in config:
                        action.required = False
            namespace = self.parse_args(argv)
            if prepare is not None:
                prepare(namespace)
            outputs = []
            for dtype in self.dataclass_types:
                names = {f.name for f in dataclasses.fields(dtype) if f.init}
                try:
                    outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in names}))
                except ValueError as err:  # the configs' own validation (TrainingArguments and friends)
                    raise UserError(f"invalid arguments: {str(err).strip()}") from None
            return tuple(outputs)

    parser = _Parser(tuple(dataclass_types), description=description)
    from transformers.hf_argparser import string_to_bool

    for action in parser._actions:
        if action.help and "%(" not in action.help:  # argparse %-formats help texts: "5%" would crash --help
            action.help = action.help.replace("%", "%%")
    for action in parser._actions:  # `bool | None` fields (TRL's bf16) want a value; let `--bf16` alone mean True
        if action.type is string_to_bool and action.nargs is None and action.option_strings:
            action.nargs, action.const = "?", True
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file of flag defaults (keys are flag names without dashes); command-line flags override it.",
    )
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _pop_config_flag(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a path to a YAML file")
            path = argv[i + 1]
            del argv[i : i + 2]
            return path
        if arg.startswith("--config="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _read_config(path: str, known: set[str]) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist: pass the path of a YAML file to --config")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UserError(f"config file {path} must be a YAML mapping of flag names to values")
    env = config.pop("env", None)
    if env is not None:
        if not isinstance(env, dict):
            raise UserError(f"config file {path}: 'env' must be a mapping of environment variables")
        for key, value in env.items():
            os.environ[str(key)] = str(value)
    unknown = sorted(key for key in config if key not in known)
    if unknown:
        raise UserError(
            f"config file {path} has unknown key(s) {', '.join(unknown)}: remove them or check the names in --help"
        )
    # list-valued flags (nargs="+") arrive from YAML as lists already; tuples would surprise HfArgumentParser
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}


def is_main_process() -> bool:
    """Whether this is the main process of a launch (``accelerate launch`` / torchrun set ``RANK``), or alone."""
    return os.environ.get("RANK", "0") == "0"


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Plain, timestamped log lines on stderr for our own messages; quieter third-party loggers. Under several
    processes only the main one logs below WARNING, so each line appears once."""
    if not is_main_process():
        level = max(level, logging.WARNING)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=level,
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers 5 renamed gradient checkpointing to activation checkpointing; TRL's configs and PEFT still use the
    # old names internally (the flag works either way): a warning the user can do nothing about
    for old in ("gradient_checkpointing", "is_gradient_checkpointing"):
        warnings.filterwarnings("ignore", message=f"`{old}` is deprecated", category=FutureWarning)
    return logging.getLogger("rlhfkit")


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Plain dict of a dataclass instance, for logs and result files."""
    return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}


def script_cli(build_parser, main):
    """A script's command-line entry, ``cli(argv=None)``: logging set up, the flags (and ``--config``) parsed by
    ``build_parser()``, then ``main(*parsed)``; bad input ends in one ``error:`` line (:func:`cli_entry`). The
    processes of a multi-process run end together and destroy their group on the way out
    (:func:`rlhfkit.sharding.end_process_group`); a process of a multi-process run that finished then exits
    without finalizing the interpreter (:func:`rlhfkit.sharding.exit_without_finalizing`), so this does not
    return there."""

    @cli_entry
    def cli(argv: list[str] | None = None):
        from rlhfkit.sharding import end_process_group, exit_without_finalizing

        setup_logging()
        finished = False
        try:
            result = main(*build_parser().parse_args_and_config(argv))
            finished = True
        finally:
            processes = end_process_group(finished)
        if processes > 1:
            exit_without_finalizing(0)
        return result

    return cli

