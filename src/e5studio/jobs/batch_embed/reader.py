"""Stream a corpus in fixed windows of input lines (or Parquet rows); bad records become rejects.

Formats:

- ``jsonl``: one JSON object per line; the text is ``text_field`` (default ``contents``, the layout of
  ``passages.jsonl``) and the id is ``id_field`` when given, else the 0-based line number.
- ``parquet``: one row per record, the same two fields as columns; the id defaults to the 0-based row number.
- ``text``: one passage per line; the id is the 0-based line number.

Window ``k`` holds input lines (rows) ``[k * size, (k + 1) * size)``, whatever they contain, so the windows
of a corpus are the same in every run, after any crash, and on every engine. A record whose line cannot be
read (invalid JSON or UTF-8, not an object, text missing, empty or not a string, bad id) is a
:class:`Reject` carrying its 1-based line (row) number and the reason; nothing is dropped silently.
Only one window is held in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.errors import InputError

FORMATS = ("jsonl", "parquet", "text")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet",
             ".txt": "text", ".text": "text", ".tsv": "text"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_EXCERPT = 200  # characters of a bad line kept in its reject record
_FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class InputSpec:
    """Where the corpus is and how to read it."""

    path: Path
    format: str
    text_field: str = "contents"
    id_field: str | None = None
    metadata: bool = False  # keep a record's other fields (knowledge bases)

    @classmethod
    def create(cls, path: str | Path, format: str = "auto", text_field: str | None = None,
               id_field: str | None = None) -> InputSpec:
        """Validated spec; ``format="auto"`` picks the format from the file suffix (else plain text)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"input {p} does not exist or is not a file")
        if format == "auto":
            format = _SUFFIXES.get(p.suffix.lower(), "text")
        if format not in FORMATS:
            raise InputError(f"unknown input format {format!r} (auto, {', '.join(FORMATS)})")
        if format == "text" and (text_field or id_field):
            raise InputError("--text-field/--id-field apply to JSONL and Parquet input; plain text has one passage "
                             "per line and the line number as id")
        return cls(p, format, text_field or "contents", id_field or None)

    @property
    def units(self) -> str:
        return "row" if self.format == "parquet" else "line"

    def total(self) -> int:
        """Progress denominator: bytes of a JSONL/text file, rows of a Parquet file."""
        if self.format == "parquet":
            return int(_parquet_file(self.path).metadata.num_rows)
        return self.path.stat().st_size

    def fingerprint(self) -> dict[str, Any]:
        """Size and a hash of the first and last MiB: a resumed job refuses an input that changed."""
        size = self.path.stat().st_size
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            digest.update(f.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                digest.update(f.read())
        return {"size": size, "sha256_head_tail": digest.hexdigest()}


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    line: int  # 1-based line (row) number in the input
    metadata: dict[str, Any] | None = None  # the other fields, where the spec keeps them


@dataclass(frozen=True)
class Reject:
    line: int  # 1-based line (row) number in the input
    reason: str
    excerpt: str

    def describe(self, spec: InputSpec) -> str:
        return f"{spec.path}:{self.line}: {self.reason}" if spec.units == "line" else \
            f"{spec.path}: row {self.line}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "excerpt": self.excerpt}


@dataclass(frozen=True)
class WindowSpec:
    """Window ``index``: input lines (rows) ``[first, first + count)``; ``start``/``end`` are byte offsets
    (JSONL, text) or row numbers (Parquet) of its first line and one past its last."""

    index: int
    first: int
    count: int
    start: int
    end: int

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "first": self.first, "count": self.count, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WindowSpec:
        return cls(int(raw["index"]), int(raw["first"]), int(raw["count"]), int(raw["start"]), int(raw["end"]))


@dataclass
class Window:
    spec: WindowSpec
    records: list[Record]
    rejects: list[Reject]


# ---------------------------------------------------------------------------------------------- parsing


def _excerpt(raw: bytes | str) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return _SURROGATE.sub("\ufffd", text.rstrip("\r\n")[:_EXCERPT])  # the rejects file stays UTF-8


def _record_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _from_fields(spec: InputSpec, index: int, text: object, raw_id: object, has_text: bool,
                 has_id: bool, excerpt: str, fields: dict[str, Any] | None = None) -> Record | Reject:
    line = index + 1
    if not has_text or text is None:
        return Reject(line, f"missing text field {spec.text_field!r}", excerpt)
    if not isinstance(text, str):
        return Reject(line, f"text field {spec.text_field!r} is {type(text).__name__}, not a string", excerpt)
    if not text.strip():
        return Reject(line, f"empty text in field {spec.text_field!r}", excerpt)
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:  # valid JSON (an escaped "\ud800"), but no text: the tokenizer cannot take it
        return Reject(line, f"text field {spec.text_field!r} has a lone surrogate (U+{ord(surrogate.group()):04X}) "
                            f"at character {surrogate.start()}", excerpt)
    metadata = None
    if spec.metadata and fields:
        metadata = {k: v for k, v in fields.items() if k not in (spec.text_field, spec.id_field)}
    if spec.id_field is None:
        return Record(str(index), text, line, metadata)
    if not has_id:
        return Reject(line, f"missing id field {spec.id_field!r}", excerpt)
    record_id = _record_id(raw_id)
    if record_id is not None and _SURROGATE.search(record_id):
        return Reject(line, f"id field {spec.id_field!r} has a lone surrogate", excerpt)
    if record_id is None:
        return Reject(line, f"id field {spec.id_field!r} must be a non-empty string or an integer", excerpt)
    return Record(record_id, text, line, metadata)


def parse_line(spec: InputSpec, index: int, raw: bytes) -> Record | Reject:
    """One JSONL/text input line (bytes, newline included or not) at 0-based ``index``."""
    line = index + 1
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(line, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", _excerpt(raw))
    decoded = decoded.rstrip("\r\n")
    if index == 0:
        decoded = decoded.removeprefix("\ufeff")  # a UTF-8 byte-order mark
    if spec.format == "text":
        if not decoded.strip():
            return Reject(line, "empty line (no text)", "")
        return Record(str(index), decoded, line)
    if not decoded.strip():
        return Reject(line, "blank line (expected a JSON object)", "")
    try:
        obj = json.loads(decoded)
    except ValueError as exc:
        return Reject(line, f"invalid JSON: {exc}", _excerpt(decoded))
    if not isinstance(obj, dict):
        return Reject(line, f"expected a JSON object, got {type(obj).__name__}", _excerpt(decoded))
    id_field = spec.id_field
    return _from_fields(spec, index, obj.get(spec.text_field), obj.get(id_field) if id_field else None,
                        spec.text_field in obj, id_field is not None and id_field in obj, _excerpt(decoded), obj)


# ---------------------------------------------------------------------------------------------- lines


def _lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset of the line, the line with its newline) from byte ``start``."""
    with path.open("rb") as f:
        f.seek(start)
        offset = start
        for raw in f:
            yield offset, raw
            offset += len(raw)


def _line_windows(spec: InputSpec, size: int, first: WindowSpec | None) -> Iterator[tuple[WindowSpec, list[bytes]]]:
    index = first.index if first else 0
    line = first.first if first else 0
    start = first.start if first else 0
    batch: list[bytes] = []
    offset = start
    for offset, raw in _lines(spec.path, start):
        batch.append(raw)
        if len(batch) == size:
            end = offset + len(raw)
            yield WindowSpec(index, line, size, start, end), batch
            index, line, start, batch = index + 1, line + size, end, []
    if batch:
        yield WindowSpec(index, line, len(batch), start, start + sum(len(b) for b in batch)), batch


def _parse_window(spec: InputSpec, wspec: WindowSpec, lines: list[bytes]) -> Window:
    records: list[Record] = []
    rejects: list[Reject] = []
    for i, raw in enumerate(lines):
        item = parse_line(spec, wspec.first + i, raw)
        (records if isinstance(item, Record) else rejects).append(item)  # type: ignore[arg-type]
    return Window(wspec, records, rejects)


# ---------------------------------------------------------------------------------------------- parquet


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ...
        raise InputError(f"{path}: cannot read as Parquet: {exc}") from None


def _parquet_columns(spec: InputSpec, pf: Any) -> list[str]:
    names = list(pf.schema_arrow.names)
    wanted = [spec.text_field] + ([spec.id_field] if spec.id_field else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(f"{spec.path}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                         "choose with --text-field/--id-field")
    return wanted + ([n for n in names if n not in wanted] if spec.metadata else [])


def _parquet_rows(spec: InputSpec, first: int) -> Iterator[tuple[object, object, dict[str, Any] | None]]:
    """(text, id, other fields where kept) for every row from 0-based row ``first``, one record batch in memory
    at a time."""
    pf = _parquet_file(spec.path)
    columns = _parquet_columns(spec, pf)
    meta = pf.metadata
    group, skip = 0, first
    while group < meta.num_row_groups and skip >= meta.row_group(group).num_rows:
        skip -= meta.row_group(group).num_rows
        group += 1
    if group >= meta.num_row_groups:
        return
    for batch in pf.iter_batches(batch_size=4096, row_groups=list(range(group, meta.num_row_groups)),
                                 columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if spec.id_field else [None] * len(texts)
        extra = columns[2 if spec.id_field else 1:]
        rows: list[dict[str, Any] | None] = [None] * len(texts)
        if spec.metadata and extra:
            values = {name: batch.column(name).to_pylist() for name in extra}
            rows = [{name: values[name][i] for name in extra} for i in range(len(texts))]
        yield from zip(texts[skip:], ids[skip:], rows[skip:], strict=True)
        skip = 0


def _parquet_record(spec: InputSpec, index: int, text: object, raw_id: object,
                    fields: dict[str, Any] | None = None) -> Record | Reject:
    excerpt = _excerpt(text) if isinstance(text, str) else repr(text)[:_EXCERPT]
    return _from_fields(spec, index, text, raw_id, text is not None, raw_id is not None, excerpt, fields)


def _parquet_windows(spec: InputSpec, size: int, first: WindowSpec | None) -> Iterator[Window]:
    index = first.index if first else 0
    row = first.first if first else 0
    window = Window(WindowSpec(index, row, 0, row, row), [], [])
    for text, raw_id, fields in _parquet_rows(spec, row):
        item = _parquet_record(spec, row, text, raw_id, fields)
        (window.records if isinstance(item, Record) else window.rejects).append(item)  # type: ignore[arg-type]
        row += 1
        if row - window.spec.first == size:
            window.spec = WindowSpec(index, window.spec.first, size, window.spec.first, row)
            yield window
            index += 1
            window = Window(WindowSpec(index, row, 0, row, row), [], [])
    if window.records or window.rejects:
        count = row - window.spec.first
        window.spec = WindowSpec(index, window.spec.first, count, window.spec.first, row)
        yield window


# ---------------------------------------------------------------------------------------------- API


def iter_windows(spec: InputSpec, size: int, first: WindowSpec | None = None) -> Iterator[Window]:
    """The input's windows of ``size`` lines (rows), from ``first`` (a window's spec: where it starts)."""
    if size < 1:
        raise InputError("the window size must be at least 1")
    if spec.format == "parquet":
        yield from _parquet_windows(spec, size, first)
        return
    for wspec, lines in _line_windows(spec, size, first):
        yield _parse_window(spec, wspec, lines)


def plan_windows(spec: InputSpec, size: int) -> list[WindowSpec]:
    """Every window's spec without parsing a record (one pass over the bytes; Parquet: its metadata)."""
    if size < 1:
        raise InputError("the window size must be at least 1")
    if spec.format == "parquet":
        rows = spec.total()
        return [WindowSpec(i, f, min(size, rows - f), f, min(f + size, rows))
                for i, f in enumerate(range(0, rows, size))]
    plans: list[WindowSpec] = []
    index, line, start, count, offset = 0, 0, 0, 0, 0
    for offset, raw in _lines(spec.path, 0):
        count += 1
        if count == size:
            plans.append(WindowSpec(index, line, size, start, offset + len(raw)))
            index, line, start, count = index + 1, line + size, offset + len(raw), 0
    if count:
        plans.append(WindowSpec(index, line, count, start, spec.path.stat().st_size))
    return plans


def read_window(spec: InputSpec, wspec: WindowSpec) -> Window:
    """The records of one planned window (what a Ray worker reads)."""
    if spec.format == "parquet":
        for window in _parquet_windows(spec, wspec.count, wspec):
            return window
        return Window(wspec, [], [])
    lines: list[bytes] = []
    for _, raw in _lines(spec.path, wspec.start):
        if len(lines) == wspec.count:
            break
        lines.append(raw)
    return _parse_window(spec, wspec, lines)
