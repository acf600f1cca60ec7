"""Loading datasets from the hub or from local files, and normalising them to the canonical kinds.

``dataset_name`` is a hub id (``datasets.load_dataset``, unchanged for users with hub access), a local file
(json, jsonl, parquet, csv, arrow; ``.gz`` allowed for json/jsonl/csv), a local folder of such files (or of
a ``save_to_disk`` dataset), or several of these joined by commas (each normalised on its own, then mixed).
``subset`` is optimum-habana's ``data_dir`` (``data/finetune``, ``data/reward``, ``data/rl``, ``data/evaluation``);
a folder's files are grouped into splits by their name up to the first ``-`` or ``.``
(``train_prefs-00000-of-00001.parquet`` is split ``train_prefs``); a folder with a single group of files
serves it as ``train`` too.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import logging
import os
import re
from dataclasses import dataclass, field

from rlhfkit import schemas
from rlhfkit.errors import UserError

logger = logging.getLogger(__name__)

BUILDER_BY_EXTENSION = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
SUPPORTED = "json, jsonl, parquet, csv or arrow"


@dataclass
class DatasetArguments:
    """Where the data comes from (shared by the scripts)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local file or folder (json/jsonl/parquet/csv/arrow), or several joined by commas. "
            "Default: the embedded toy task (built offline)."
        },
    )
    subset: str | None = field(
        default=None, metadata={"help": "Sub-folder (hub data_dir), e.g. data/finetune, data/reward, data/rl."}
    )
    split: str = field(default="train", metadata={"help": "Split to read."})
    error_on_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Stop at the first row with an empty or missing field instead of dropping it."},
    )


# ------------------------------------------------------------------------------------------- local files
def _builder_for(path: str) -> str | None:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return BUILDER_BY_EXTENSION.get(os.path.splitext(name)[1])


def _split_of(filename: str) -> str:
    match = re.match(r"[^-.]+", os.path.basename(filename))
    return match.group(0) if match else filename


def _data_files_in(folder: str) -> dict[str, list[str]]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if _builder_for(n) and not n.startswith("."))
        if files and root == folder:
            break  # files at the top level win over nested folders
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for path in files:
        groups[_split_of(path)].append(path)
    if len(groups) == 1 and "train" not in groups:
        groups["train"] = next(iter(groups.values()))
    return dict(groups)


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def find_json_error(path: str) -> str | None:
    """Where a json/jsonl file is malformed, as ``"line N: message"``; None when it parses."""
    with _open_text(path) as handle:
        text = handle.read()
    stripped = text.lstrip()
    if not stripped:
        return "the file is empty"
    if stripped[0] == "[":
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            return f"line {err.lineno}: {err.msg}"
    # split on "\n" only, as the JSON Lines reader does: str.splitlines() also breaks at U+2028, \x85, \x0c...
    # (legal inside JSON strings), which would shift every line number after such a character
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {number}: {err.msg}"
        if not isinstance(value, dict):
            return f"line {number}: expected a JSON object, found {type(value).__name__}"
    return None


def _load_files(files: list[str], source: str):
    import datasets

    builders = {_builder_for(f) for f in files}
    if len(builders) != 1:
        raise UserError(f"{source} mixes file types ({', '.join(sorted(b for b in builders if b))}): keep one type per split")
    builder = builders.pop()
    for path in files:
        if os.path.getsize(path) == 0:
            raise UserError(f"dataset file {path} is empty: point --dataset_name at a file with rows")
    try:
        with _quiet("datasets"):  # its own log lines would repeat, with a traceback, the one-line error below
            return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # noqa: BLE001 - turned into a precise message below, or re-raised
        if builder == "json":
            for path in files:
                problem = find_json_error(path)
                if problem == "the file is empty":
                    raise UserError(f"dataset file {path} is empty: point --dataset_name at a file with rows") from None
                if problem:
                    raise UserError(f"malformed JSON in {path}, {problem}: fix or remove that line") from None
        raise UserError(f"could not read {source} as {builder}: {_short(err)}") from None


@contextlib.contextmanager
def _quiet(name: str):
    """Silence a library's logger for the duration (errors are reported by us, once)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        text = str(cause).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def load_raw(name: str, subset: str | None = None, split: str = "train"):
    """One dataset (no commas), before normalisation: a ``datasets.Dataset``."""
    import datasets

    path = os.path.expanduser(name)
    if os.path.exists(path):
        if os.path.isfile(path):
            if subset:
                raise UserError(f"--subset {subset} needs a folder, but {name} is a file: drop --subset")
            if not _builder_for(path):
                raise UserError(f"{name} is not a {SUPPORTED} file: convert it or pass a folder of such files")
            if split != "train":
                raise UserError(f"split '{split}' not found in {name}: a single file has only the split 'train'")
            return _load_files([path], name)
        folder = os.path.join(path, subset) if subset else path
        if not os.path.isdir(folder):
            raise UserError(f"--subset {subset} not found: {folder} is not a folder")
        if os.path.exists(os.path.join(folder, "dataset_dict.json")) or os.path.exists(
            os.path.join(folder, "state.json")
        ):
            loaded = datasets.load_from_disk(folder)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserError(f"split '{split}' not found in {folder}; splits there: {', '.join(loaded)}")
                return loaded[split]
            if split != "train":
                raise UserError(f"split '{split}' not found in {folder}: it holds one dataset, read as 'train'")
            return loaded
        groups = _data_files_in(folder)
        if not groups:
            raise UserError(f"no {SUPPORTED} files in {folder}: point --dataset_name (and --subset) at data files")
        if split not in groups:
            raise UserError(f"split '{split}' not found in {folder}; splits there: {', '.join(sorted(groups))}")
        return _load_files(groups[split], folder)

    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"dataset path {name} does not exist: check the path")
    try:
        return datasets.load_dataset(name, data_dir=subset, split=split)
    except ValueError as err:
        message = _short(err)
        if "split" in message.lower():
            raise UserError(f"split '{split}' not found in {name}: {message}") from None
        raise UserError(f"could not load dataset {name}: {message}") from None
    except Exception as err:  # noqa: BLE001 - hub errors have many types; all mean the same to the user
        raise UserError(
            f"could not load dataset '{name}' from the hub ({_short(err)}), and no local path has that name: "
            "pass a local file or folder, or check network access and HF_TOKEN"
        ) from None


# --------------------------------------------------------------------------------------------- normalise
def normalize(dataset, kind: str, source: str = "dataset", strict: bool = False, limit: int | None = None,
              report: dict | None = None):
    """Canonical rows of ``kind`` from a raw dataset; invalid rows are dropped with a count (or, if
    ``strict``, the first one is an error). ``limit`` stops after that many valid rows. Columns the schema does
    not read are named in one warning; for SFT, a ``label`` column keeps only the ``label: true`` rows.
    ``report``, when given, is filled with what was read: schema, rows read and kept, drops by reason, ignored
    columns, labels."""
    import datasets

    schema = schemas.detect_schema(dataset.column_names, kind, source)
    logger.info("%s: %d rows, schema %s -> %s", source, len(dataset), schema.name, kind)
    labelled = kind in ("sft", "unpaired") and "label" in dataset.column_names and "label" in schema.optional
    ignored = schema.ignored(dataset.column_names)
    if "label" in dataset.column_names and not labelled and "label" not in ignored:
        ignored.append("label")  # read for SFT and unpaired preference only
    if ignored:
        logger.warning("%s: ignored columns (the %s schema does not read them): %s", source, schema.name,
                       ", ".join(ignored))
    rows, reasons, unwanted = [], collections.Counter(), 0
    for index, row in enumerate(dataset):
        try:
            if kind == "unpaired":
                rows.extend(schemas.convert_unpaired(schema, row, _label(row.get("label"), source, index)
                                                     if labelled else None))
            elif labelled and not _label(row.get("label"), source, index):
                unwanted += 1
                continue
            else:
                rows.append(schemas.convert_row(schema, kind, row))
        except schemas.InvalidRow as err:
            if strict:
                raise UserError(
                    f"{source} row {index}: {err}: fix the data, or drop --error_on_invalid_rows to skip such rows"
                ) from None
            reasons[str(err)] += 1
        except schemas.Unsupported as err:
            raise UserError(f"{source} row {index}: {err}") from None
        if limit is not None and len(rows) >= limit:
            break
    if unwanted:
        logger.warning("%s: SFT trains only on the label: true rows; skipped %d label: false (unwanted) answers, "
                       "which kto.py (unpaired preference) learns from", source, unwanted)
    dropped = sum(reasons.values())
    if dropped:
        detail = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common(5))
        logger.warning("%s: dropped %d invalid row(s) (%s)", source, dropped, detail)
    if report is not None:
        report.update(source=source, schema=schema.name, rows_read=index + 1 if len(dataset) else 0,
                      rows_kept=len(rows), dropped=dict(reasons.most_common()), ignored_columns=ignored)
        if labelled:
            desirable = sum(bool(r["label"]) for r in rows) if kind == "unpaired" else len(rows)
            report["labels"] = {"true": desirable, "false": len(rows) - desirable if kind == "unpaired" else unwanted}
    if not rows:
        why = f"{dropped} dropped as invalid, most often: {reasons.most_common(1)[0][0]}" if dropped else "no label: true rows"
        raise UserError(f"{source} has no usable rows for {kind} ({why}): check the data")
    return datasets.Dataset.from_list(rows)


def _label(value, source: str, index: int) -> bool:
    """An unpaired-preference label: true / false (or 1 / 0)."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise UserError(f"{source} row {index}: 'label' is {value!r}; an unpaired-preference label is true or false")


def load_canonical(
    dataset_name: str,
    kind: str,
    subset: str | None = None,
    split: str = "train",
    strict: bool = False,
    limit: int | None = None,
    reports: list | None = None,
):
    """Load one dataset, or several joined by commas, as canonical rows of ``kind`` (``reports``: one
    :func:`normalize` report per dataset is appended)."""
    import datasets

    names = [n.strip() for n in dataset_name.split(",") if n.strip()]
    if not names:
        raise UserError("--dataset_name is empty: pass a hub id or a local path")
    parts = []
    for name in names:
        source = name if not subset else f"{name} ({subset})"
        report = {} if reports is not None else None
        parts.append(normalize(load_raw(name, subset, split), kind, source, strict=strict, limit=limit, report=report))
        if reports is not None:
            reports.append(report)
    if len(parts) == 1:
        return parts[0]
    if any("tools" in p.column_names for p in parts):  # a mixture: rows without tools have none
        parts = [p if "tools" in p.column_names else p.add_column("tools", [""] * len(p)) for p in parts]
    mixed = datasets.concatenate_datasets(parts)
    logger.info("mixed %d datasets: %d rows", len(parts), len(mixed))
    return mixed


def render(dataset, kind: str, tokenizer):
    """Canonical rows -> TRL's format for this tokenizer (chat template, or optimum-habana's Question/Answer). Data with
    tools under a chat template is rendered to text here, through the template (see :func:`schemas.render_row`)."""
    conversational = schemas.has_chat_template(tokenizer)
    templated = conversational and any(schemas.has_tools(row) for row in dataset)
    if templated:
        logger.info("tool calls: the chat template renders the conversations and their tools here (text rows)")
    return dataset.map(
        lambda row: schemas.render_row(row, kind, conversational, tokenizer if templated else None),
        remove_columns=dataset.column_names,
        desc="formatting",
    )


def token_lengths(rendered, kind: str, tokenizer, add_eos: bool = False) -> list[int]:
    """Tokens in each rendered row: prompt plus its longest answer (chosen or rejected for pairs).

    ``add_eos`` counts the EOS token a trainer appends to plain-text answers (chat templates write their own).
    """
    answers = schemas.ANSWER_COLUMNS[kind]
    conversational = schemas.has_chat_template(tokenizer)
    lengths = []
    for row in rendered:
        if conversational and not isinstance(row["prompt"], str):
            texts = [row["prompt"] + row[a] for a in answers] or [row["prompt"]]
            counts = [len(tokenizer.apply_chat_template(t, tokenize=True, return_dict=False)) for t in texts]
        else:
            texts = [row["prompt"] + row[a] for a in answers] or [row["prompt"]]
            counts = [len(tokenizer(t, add_special_tokens=True)["input_ids"]) + int(add_eos) for t in texts]
        lengths.append(max(counts))
    return lengths


def token_counts(rendered, kind: str, tokenizer) -> list[dict]:
    """Each rendered row's tokens: ``prompt`` (the context) and one count per answer (the tokens trained on), as
    the scripts tokenize them (chat template, or text with the tokenizer's special tokens)."""
    answers = schemas.ANSWER_COLUMNS[kind]
    conversational = schemas.has_chat_template(tokenizer)
    out = []
    for row in rendered:
        if conversational and not isinstance(row["prompt"], str):
            def count(messages, prompt_only=False):
                return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                         add_generation_prompt=prompt_only))
            prompt = count(row["prompt"], True) if row["prompt"] else 0
            counts = {a: count(row["prompt"] + row[a]) - prompt for a in answers}
        else:
            def count(text):
                return len(tokenizer(text, add_special_tokens=True)["input_ids"])
            prompt = count(row["prompt"]) if row["prompt"] else 0
            counts = {a: count(row["prompt"] + row[a]) - prompt for a in answers}
        out.append({"prompt": prompt, **counts})
    return out


def filter_by_token_length(rendered, kind: str, tokenizer, max_length: int, source: str = "dataset",
                           add_eos: bool = False):
    """Drop rows longer than ``max_length`` tokens (never characters), with a count; none left is an error."""
    lengths = token_lengths(rendered, kind, tokenizer, add_eos=add_eos)
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    if not keep:
        raise UserError(
            f"--max_length {max_length} is shorter than every example in {source} "
            f"(the shortest has {min(lengths)} tokens): raise --max_length"
        )
    if len(keep) < len(lengths):
        logger.warning(
            "%s: dropped %d of %d rows longer than --max_length %d tokens",
            source, len(lengths) - len(keep), len(lengths), max_length,
        )
        return rendered.select(keep)
    return rendered
