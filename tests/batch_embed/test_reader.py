"""Input formats: JSONL (passages.jsonl and custom fields), Parquet, plain text; windows; bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.reader import (
    InputSpec,
    Record,
    WindowSpec,
    iter_windows,
    plan_windows,
    read_window,
)
from tests.batch_embed.conftest import write_jsonl


def _all(spec: InputSpec, size: int = 1000) -> tuple[list[Record], list[tuple[int, str]]]:
    records, rejects = [], []
    for w in iter_windows(spec, size):
        records += w.records
        rejects += [(r.line, r.reason) for r in w.rejects]
    return records, rejects


def test_passages_jsonl_ids_are_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"contents": "a b"}, {"contents": "c"}, {"contents": "d e f"}])
    records, rejects = _all(InputSpec.create(path))
    assert [(r.id, r.text, r.line) for r in records] == [("0", "a b", 1), ("1", "c", 2), ("2", "d e f", 3)]
    assert rejects == []


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"contents": "first"}\n{"contents": "second"}\n')
    records, rejects = _all(InputSpec.create(path))
    assert [r.text for r in records] == ["first", "second"] and rejects == []


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "docs.json", [{"doc": "x1", "body": "first"}, {"doc": 7, "body": "second"}])
    records, _ = _all(InputSpec.create(path, text_field="body", id_field="doc"))
    assert [(r.id, r.text) for r in records] == [("x1", "first"), ("7", "second")]


def test_bad_records_have_line_numbers_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"contents": "fine"}), "{not json", "", json.dumps({"text": "wrong field"}),
             json.dumps({"contents": 42}), json.dumps({"contents": "   "}), json.dumps(["a list"]),
             json.dumps({"contents": "ok again", "id": None})]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"contents": "\xff\xfe"}\n')
    records, rejects = _all(InputSpec.create(path))
    assert [(r.id, r.line) for r in records] == [("0", 1), ("7", 8)]
    reasons = dict(rejects)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9]
    assert reasons[2].startswith("invalid JSON")
    assert "blank line" in reasons[3]
    assert reasons[4] == "missing text field 'contents'"
    assert "int, not a string" in reasons[5]
    assert "empty text" in reasons[6]
    assert "JSON object" in reasons[7]
    assert "UTF-8" in reasons[9]


def test_bad_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"t": "a", "i": "x"}, {"t": "b"}, {"t": "c", "i": True},
                                              {"t": "d", "i": ""}])
    records, rejects = _all(InputSpec.create(path, text_field="t", id_field="i"))
    assert [r.id for r in records] == ["x"]
    assert [line for line, _ in rejects] == [2, 3, 4]
    assert "missing id field 'i'" in rejects[0][1]


def test_plain_text_one_passage_per_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("first passage\r\nsecond one\n\nfourth, no newline at the end")
    records, rejects = _all(InputSpec.create(path))
    assert [(r.id, r.text) for r in records] == [("0", "first passage"), ("1", "second one"),
                                                   ("3", "fourth, no newline at the end")]
    assert rejects == [(3, "empty line (no text)")]
    with pytest.raises(InputError, match="plain text"):
        InputSpec.create(path, id_field="x")


def test_parquet_input(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet"
    table = pa.table({"text": ["alpha", None, "gamma", "delta", "eps"], "key": ["a", "b", "c", None, "e"]})
    pq.write_table(table, path, row_group_size=2)
    records, rejects = _all(InputSpec.create(path, text_field="text", id_field="key"), size=2)
    assert [(r.id, r.text, r.line) for r in records] == [("a", "alpha", 1), ("c", "gamma", 3), ("e", "eps", 5)]
    assert rejects == [(2, "missing text field 'text'"), (4, "missing id field 'key'")]
    records, _ = _all(InputSpec.create(path, text_field="text"), size=3)
    assert [r.id for r in records] == ["0", "2", "3", "4"]  # row numbers
    with pytest.raises(InputError, match="no column 'contents'"):
        _all(InputSpec.create(path))


def test_format_detection_and_errors(tmp_path: Path) -> None:
    assert InputSpec.create(write_jsonl(tmp_path / "a.jsonl", [])).format == "jsonl"
    (tmp_path / "b.txt").write_text("x\n")
    assert InputSpec.create(tmp_path / "b.txt").format == "text"
    assert InputSpec.create(tmp_path / "b.txt", "jsonl").format == "jsonl"
    with pytest.raises(InputError, match="does not exist"):
        InputSpec.create(tmp_path / "missing.jsonl")
    (tmp_path / "c.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read as Parquet"):
        _all(InputSpec.create(tmp_path / "c.parquet"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_windows_are_fixed_line_ranges_and_plans_match(tmp_path: Path, fmt: str) -> None:
    rows = [{"contents": f"passage {i}" if i % 7 else ""} for i in range(23)]  # every 7th line is bad
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "c.jsonl", rows)
    else:
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"contents": [r["contents"] for r in rows]}), path, row_group_size=4)
    spec = InputSpec.create(path)
    windows = list(iter_windows(spec, 5))
    assert [w.spec.count for w in windows] == [5, 5, 5, 5, 3]
    assert [w.spec.first for w in windows] == [0, 5, 10, 15, 20]
    assert [len(w.records) + len(w.rejects) for w in windows] == [5, 5, 5, 5, 3]
    assert [r.line for w in windows for r in w.rejects] == [1, 8, 15, 22]
    assert plan_windows(spec, 5) == [w.spec for w in windows]
    for w in windows:  # a Ray worker reads a planned window on its own
        again = read_window(spec, w.spec)
        assert again.records == w.records and again.rejects == w.rejects
    # resuming from the start of window 3 gives windows 3 and 4 unchanged
    start = windows[3].spec
    resumed = list(iter_windows(spec, 5, WindowSpec(start.index, start.first, 0, start.start, start.start)))
    assert [w.spec for w in resumed] == [w.spec for w in windows[3:]]
    assert [w.records for w in resumed] == [w.records for w in windows[3:]]
