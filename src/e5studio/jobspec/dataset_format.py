"""The fine-tuning dataset format and its validation (pure Python: the web UI and the CLI both use it).

The format (fixed by the platform we reproduce):

- ``passages.jsonl``: one ``{"contents": str}`` per line; the 0-based line number is the doc id.
- ``train.jsonl``: one ``{"query": str, "positives": {"doc_id": [...]}, "negatives": {"doc_id": [...]}}``
  per line; doc ids are ints or strings of ints naming passages.jsonl lines; one or more positives, any
  number of negatives (``negatives`` may be left out).

Files are streamed line by line (validation never holds a whole file; training keeps only the byte offset
of each passage). Problems are reported with file and 1-based line number, like a compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5studio.errors import InputError
from e5studio.jobspec.layout import PASSAGES_FILE, TRAIN_FILE
from e5studio.jobspec.params import plain_text

DEFAULT_MAX_PROBLEMS = 100
_INT_RE = re.compile(r"^[0-9]+$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY_BEFORE = re.compile(r'"([^"\\]{1,64})"\s*:\s*$')
# the field names of the format: the only text of a file that a message quotes (a dataset named by path may be
# any file the server can read, so messages say where and what is wrong, never what the file holds)
_FIELDS = frozenset({"contents", "title", "query", "positives", "negatives", "doc_id", "score"})
_LISTED = 10  # line numbers listed in an aggregated warning


@dataclass(frozen=True)
class Problem:
    """One finding: ``file:line: message`` (line is 1-based; 0 for the whole file)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class _TooMany(Exception):
    """Raised inside validation when the error cap is reached."""


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found; ``ok`` when there are no errors (warnings allowed)."""

    directory: Path
    train_n_passages: int
    max_problems: int
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    passages: int = 0
    queries: int = 0
    positives: int = 0
    negatives: int = 0
    passages_sha256: str = ""
    train_sha256: str = ""
    stopped_early: bool = False
    _warnings_dropped: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, line: int, message: str) -> None:
        self.errors.append(Problem(file, line, message))
        if len(self.errors) >= self.max_problems:
            self.stopped_early = True
            raise _TooMany

    def warn(self, file: str, line: int, message: str) -> None:
        if len(self.warnings) < self.max_problems:
            self.warnings.append(Problem(file, line, message))
        else:
            self._warnings_dropped += 1

    def lines(self) -> list[str]:
        """The report as text lines: errors, warnings, then a summary."""
        out = [f"error: {p}" for p in self.errors] + [f"warning: {p}" for p in self.warnings]
        if self._warnings_dropped:
            out.append(f"warning: {self._warnings_dropped} more warnings not shown")
        if self.stopped_early:
            out.append(f"stopped after {len(self.errors)} errors (the cap); fix these and validate again")
        verdict = "valid" if self.ok else f"INVALID ({len(self.errors)} errors)"
        out.append(f"{self.directory}: {verdict}: {self.passages} passages, {self.queries} queries, "
                   f"{self.positives} positive pairs, {self.negatives} negatives, {len(self.warnings)} warnings")
        return out


# ------------------------------------------------------------------------------------------ line reading


def contained(path: Path) -> Path:
    """``path`` resolved, refused (InputError naming it) when a link takes it out of its own folder: a dataset
    named by path must not be a way to read other files of the server."""
    folder = path.parent.resolve()
    resolved = path.resolve()
    if resolved.parent != folder:
        raise InputError(f"{path}: is a link to a file outside its folder; copy the file into the folder instead")
    return resolved


def read_lines(path: Path, digest: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline), feeding every byte to ``digest``. The last path
    component is opened without following a link (after :func:`contained` has resolved it)."""
    fd = os.open(contained(path), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with open(fd, "rb") as f:
        for number, raw in enumerate(f, start=1):
            digest.update(raw)
            yield number, raw.rstrip(b"\r\n")


def _json_problem(text: str, exc: json.JSONDecodeError) -> str:
    """A precise message for malformed JSON: column, what is wrong and which field (by its name in the format);
    none of the line's text is quoted."""
    if exc.msg.startswith("Unterminated string"):
        key = _KEY_BEFORE.search(text[:exc.pos])
        what = f'the value of "{key.group(1)}"' if key and key.group(1) in _FIELDS else "a string"
        return (f"malformed JSON: {what} starting at column {exc.colno} is never closed "
                f"(missing closing quote)")
    hint = ""
    if exc.msg.startswith("Expecting property name enclosed in double quotes"):
        hint = " (a key is missing its opening double quote?)"
    return f"malformed JSON at column {exc.colno}: {exc.msg}{hint}"


def decode_line(raw: bytes) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, problem message)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {exc.start + 1} of the line)"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, _json_problem(text, exc)


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number")


# ------------------------------------------------------------------------------------------ validation


def check_passage(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object {{\"contents\": ...}}, got {_type_name(obj)}"
    if "contents" not in obj:
        return "missing field \"contents\""
    if not isinstance(obj["contents"], str):
        return f"field \"contents\" must be a string, got {_type_name(obj['contents'])}"
    if not obj["contents"].strip():
        return "field \"contents\" is empty"
    return _lone_surrogate("contents", obj["contents"])


def _lone_surrogate(field: str, text: str) -> str | None:
    """Valid JSON (an escaped "\\ud800") that is no text: the tokenizer cannot take it."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return f"field \"{field}\" has a lone surrogate (U+{ord(found.group()):04X}) at character {found.start()}"


def _doc_id(value: Any, n_passages: int) -> tuple[int, None] | tuple[None, str]:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f"doc id {json.dumps(value)} is not an integer or a string of digits"
    if isinstance(value, str):
        if not _INT_RE.fullmatch(value):
            return None, f"doc id {json.dumps(value)} is not an integer or a string of digits"
        value = int(value)
    if not 0 <= value < n_passages:
        return None, (f"doc id {value} is out of range: {PASSAGES_FILE} has {n_passages} passages "
                      f"(doc ids 0 to {n_passages - 1})")
    return value, None


@dataclass(frozen=True)
class TrainExample:
    """One train.jsonl line: query text, positive and negative doc ids (file order), 1-based line."""

    query: str
    positives: tuple[int, ...]
    negatives: tuple[int, ...]
    line: int


def _parse_ids(obj: dict[str, Any], key: str, n_passages: int, required: bool
               ) -> tuple[list[int], list[str], list[str]]:
    """(ids, errors, warnings) of ``obj[key]["doc_id"]``."""
    if key not in obj:
        return [], ([f"missing field \"{key}\""] if required else []), []
    holder = obj[key]
    shape = f"field \"{key}\" must be an object {{\"doc_id\": [...]}}"
    if not isinstance(holder, dict):
        return [], [f"{shape}, got {_type_name(holder)}"], []
    if "doc_id" not in holder:
        return [], [f"{shape}: \"doc_id\" is missing"], []
    raw = holder["doc_id"]
    if not isinstance(raw, list):
        return [], [f"field \"{key}.doc_id\" must be an array, got {_type_name(raw)}"], []
    ids: list[int] = []
    errors: list[str] = []
    warnings: list[str] = []
    for value in raw:
        doc, problem = _doc_id(value, n_passages)
        if problem is not None:
            errors.append(f"{key}: {problem}")
        elif doc in ids:
            warnings.append(f"{key}: doc id {doc} is listed twice (used once)")
        else:
            ids.append(doc)  # type: ignore[arg-type]
    if required and not raw:
        errors.append(f"field \"{key}.doc_id\" is empty: every query needs at least one positive")
    return ids, errors, warnings


def parse_train_line(obj: Any, n_passages: int, line: int) -> tuple[TrainExample | None, list[str], list[str]]:
    """(example or None, errors, warnings) for one decoded train.jsonl line."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object {{\"query\": ..., \"positives\": ..., \"negatives\": ...}}, "
                      f"got {_type_name(obj)}"], []
    errors: list[str] = []
    query = obj.get("query")
    if "query" not in obj:
        errors.append("missing field \"query\"")
    elif not isinstance(query, str):
        errors.append(f"field \"query\" must be a string, got {_type_name(query)}")
    elif not query.strip():
        errors.append("field \"query\" is empty")
    elif (surrogate := _lone_surrogate("query", query)) is not None:
        errors.append(surrogate)
    positives, pos_errors, pos_warnings = _parse_ids(obj, "positives", n_passages, required=True)
    negatives, neg_errors, neg_warnings = _parse_ids(obj, "negatives", n_passages, required=False)
    errors += pos_errors + neg_errors
    both = sorted(set(positives) & set(negatives))
    if both:
        errors.append(f"doc id{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} listed as both "
                      "positive and negative")
    if errors:
        return None, errors, pos_warnings + neg_warnings
    assert isinstance(query, str)
    return TrainExample(query, tuple(positives), tuple(negatives), line), [], pos_warnings + neg_warnings


def _listed(lines: Sequence[int]) -> str:
    shown = ", ".join(map(str, lines[:_LISTED]))
    return shown + (f" and {len(lines) - _LISTED} more" if len(lines) > _LISTED else "")


def validate_dataset(directory: Path, train_n_passages: int = 8, max_problems: int = DEFAULT_MAX_PROBLEMS
                     ) -> ValidationReport:
    """Check passages.jsonl and train.jsonl in ``directory`` completely, streaming both files.

    Stops after ``max_problems`` errors. Queries with fewer than ``train_n_passages - 1`` negatives and
    repeated queries are warnings (what happens to them is said in the message).
    """
    plain_text("directory", str(directory))  # a NUL or a line break in a path is a 400, not a crash or a forged line
    if train_n_passages < 1:
        raise InputError("train_n_passages must be at least 1 (one positive per group)")
    if max_problems < 1:
        raise InputError("max_problems must be at least 1")
    report = ValidationReport(directory=directory, train_n_passages=train_n_passages, max_problems=max_problems)
    passages, train = directory / PASSAGES_FILE, directory / TRAIN_FILE
    try:
        if not directory.is_dir():
            report.error(str(directory), 0, "not a directory")
        for path in (passages, train):
            if not path.is_file():
                report.error(str(path), 0, "file not found (a dataset needs passages.jsonl and train.jsonl)")
        if report.errors:
            return report
        for path in (passages, train):
            contained(path)
        _validate_passages(passages, report)
        _validate_train(train, report)
    except _TooMany:
        pass
    except InputError as exc:
        report.errors.append(Problem(str(directory), 0, str(exc)))
    except OSError as exc:
        report.errors.append(Problem(str(exc.filename or directory), 0, f"cannot read: {exc.strerror or exc}"))
    return report


def _validate_passages(path: Path, report: ValidationReport) -> None:
    name = str(path)
    digest = hashlib.sha256()
    for number, raw in read_lines(path, digest):
        report.passages = number
        if not raw.strip():
            report.error(name, number, f"empty line: every line is a passage (this would be doc id {number - 1})")
            continue
        obj, problem = decode_line(raw)
        problem = problem or check_passage(obj)
        if problem:
            report.error(name, number, f"{problem} (doc id {number - 1})")
    if report.passages == 0:
        report.error(name, 0, "no passages: the file is empty")
    report.passages_sha256 = digest.hexdigest()


def _validate_train(path: Path, report: ValidationReport) -> None:
    name = str(path)
    digest = hashlib.sha256()
    needed = report.train_n_passages - 1
    short: list[int] = []
    fewest = needed
    first_seen: dict[bytes, int] = {}
    for number, raw in read_lines(path, digest):
        if not raw.strip():
            report.warn(name, number, "blank line ignored")
            continue
        obj, problem = decode_line(raw)
        if problem:
            report.error(name, number, problem)
            continue
        example, errors, warnings = parse_train_line(obj, report.passages, number)
        for message in warnings:
            report.warn(name, number, message)
        for message in errors:
            report.error(name, number, message)
        if example is None:
            continue
        report.queries += 1
        report.positives += len(example.positives)
        report.negatives += len(example.negatives)
        if len(example.negatives) < needed:
            short.append(number)
            fewest = min(fewest, len(example.negatives))
        key = hashlib.blake2b(example.query.encode("utf-8"), digest_size=16).digest()
        if key in first_seen:
            report.warn(name, number, f"duplicate query (same text as line {first_seen[key]}): both lines are "
                                      "trained on, and their positives are merged for false-negative masking")
        else:
            first_seen[key] = number
    report.train_sha256 = digest.hexdigest()
    if report.queries == 0 and not report.errors:
        report.error(name, 0, "no training queries: the file is empty")
    if short:
        report.warn(name, 0, (
            f"{len(short)} of {report.queries} queries have fewer than train_n_passages - 1 = {needed} negatives "
            f"(fewest: {fewest}; lines {_listed(short)}): each of their groups is filled up with random passages "
            "that are not positives of the query, drawn anew every epoch; mine hard negatives with "
            "`e5studio datasets mine-negatives` for better training"))



