"""Dataset validation (the platform's documentation example, generated bad files) and group sampling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from e5studio.errors import InputError
from e5studio.jobs.files import file_sha256
from e5studio.jobs.train.passages import PassageStore, TrainData, read_examples
from e5studio.jobs.train.sampling import GroupSampler
from e5studio.jobspec.dataset_format import validate_dataset
from tests.jobs.toy import toy_dataset, write_jsonl

EXAMPLE = Path(__file__).parent / "platform_example"


def _dataset(tmp_path: Path, passages: list[object] | str, train: list[object] | str) -> Path:
    for name, rows in (("passages.jsonl", passages), ("train.jsonl", train)):
        if isinstance(rows, str):
            (tmp_path / name).write_text(rows, encoding="utf-8")
        else:
            write_jsonl(tmp_path / name, rows)
    return tmp_path


def _messages(problems: list) -> list[str]:
    return [str(p) for p in problems]


PASSAGES = [{"contents": f"passage {i}"} for i in range(10)]


def _line(query: str = "q", positives: object = ("1",), negatives: object = ("2",)) -> dict[str, object]:
    return {"query": query, "positives": {"doc_id": list(positives)}, "negatives": {"doc_id": list(negatives)}}


# -------------------------------------------------------------------------------------- the platform example


def test_platform_example_reports_both_broken_lines_precisely() -> None:
    report = validate_dataset(EXAMPLE, train_n_passages=3)
    errors = _messages(report.errors)
    assert len(errors) == 2, errors
    passages, train = errors
    assert passages.startswith(f"{EXAMPLE / 'passages.jsonl'}:2: malformed JSON: the value of \"contents\" "
                               "starting at column 14 is never closed (missing closing quote)")
    assert "(doc id 1)" in passages
    assert train.startswith(f"{EXAMPLE / 'train.jsonl'}:2: malformed JSON at column 2: Expecting property name "
                            "enclosed in double quotes (a key is missing its opening double quote?)")
    assert "query: What" not in train and "query: What" not in passages  # no file content is quoted
    assert not report.ok
    # the rest of both files was still checked and counted
    assert report.passages == 4 and report.queries == 2 and report.positives == 2 and report.negatives == 4


def test_platform_example_fixed_is_valid_with_a_warning_about_too_few_negatives(tmp_path: Path) -> None:
    for name in ("passages.jsonl", "train.jsonl"):
        text = (EXAMPLE / name).read_text()
        text = text.replace("Near East.}", "Near East.\"}").replace("{query\":", "{\"query\":")
        (tmp_path / name).write_text(text)
    report = validate_dataset(tmp_path, train_n_passages=3)
    assert report.ok, report.lines()
    assert (report.passages, report.queries, report.positives, report.negatives) == (4, 3, 3, 5)
    warnings = _messages(report.warnings)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 'train.jsonl'}: 1 of 3 queries have fewer than train_n_passages - 1"
                                  " = 2 negatives (fewest: 1; lines 2): each of their groups is filled up with random "
                                  "passages that are not positives of the query")
    assert report.passages_sha256 == file_sha256(tmp_path / "passages.jsonl")
    assert report.train_sha256 == file_sha256(tmp_path / "train.jsonl")
    assert report.lines()[-1].endswith("valid: 4 passages, 3 queries, 3 positive pairs, 5 negatives, 1 warnings")


# -------------------------------------------------------------------------------------- generated bad files


BAD_TRAIN_LINES: list[tuple[object, str]] = [
    ("[1, 2]", "expected a JSON object {\"query\": ..., \"positives\": ..., \"negatives\": ...}, got array"),
    ({"positives": {"doc_id": ["1"]}}, "missing field \"query\""),
    (_line(query=5), "field \"query\" must be a string, got number"),  # type: ignore[arg-type]
    (_line(query="   "), "field \"query\" is empty"),
    ({"query": "q"}, "missing field \"positives\""),
    ({"query": "q", "positives": ["1"]}, "field \"positives\" must be an object {\"doc_id\": [...]}, got array"),
    ({"query": "q", "positives": {"ids": ["1"]}}, "\"doc_id\" is missing"),
    ({"query": "q", "positives": {"doc_id": "1"}}, "field \"positives.doc_id\" must be an array, got string"),
    (_line(positives=()), "field \"positives.doc_id\" is empty: every query needs at least one positive"),
    (_line(positives=("x1",)), "positives: doc id \"x1\" is not an integer or a string of digits"),
    (_line(positives=(1.5,)), "positives: doc id 1.5 is not an integer or a string of digits"),
    (_line(positives=(True,)), "positives: doc id true is not an integer or a string of digits"),
    (_line(positives=("-1",)), "doc id \"-1\" is not an integer or a string of digits"),
    (_line(positives=(-1,)), "positives: doc id -1 is out of range: passages.jsonl has 10 passages (doc ids 0 to 9)"),
    (_line(negatives=("10",)), "negatives: doc id 10 is out of range: passages.jsonl has 10 passages"),
    ({"query": "q", "positives": {"doc_id": ["1"]}, "negatives": None}, "field \"negatives\" must be an object"),
    (_line(positives=("1", "3"), negatives=("3", 1)), "doc ids 1, 3 listed as both positive and negative"),
]


@pytest.mark.parametrize(("line", "message"), BAD_TRAIN_LINES, ids=[m[:40] for _, m in BAD_TRAIN_LINES])
def test_each_bad_train_line_is_reported_with_file_and_line(tmp_path: Path, line: object, message: str) -> None:
    good = _line()
    text = json.dumps(good) + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n" + json.dumps(
        _line("other")) + "\n"
    report = validate_dataset(_dataset(tmp_path, PASSAGES, text))
    errors = _messages(report.errors)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'train.jsonl'}:2: ")
    assert message in errors[0]
    assert report.queries == 2  # the good lines around it still count


@pytest.mark.parametrize(("line", "message"), [
    ("{\"contents\": 3}", "field \"contents\" must be a string, got number (doc id 2)"),
    ("{\"text\": \"x\"}", "missing field \"contents\" (doc id 2)"),
    ("{\"contents\": \"  \"}", "field \"contents\" is empty (doc id 2)"),
    ("\"just a string\"", "expected a JSON object {\"contents\": ...}, got string"),
    ("", "empty line: every line is a passage (this would be doc id 2)"),
    ("{\"contents\": \"a\"} trailing", "malformed JSON at column 19: Extra data"),
    ("{\"contents\": \"tab\there\"}", "malformed JSON at column 18: Invalid control character"),
])
def test_each_bad_passage_line_is_reported_with_its_doc_id(tmp_path: Path, line: str, message: str) -> None:
    text = "{\"contents\": \"a\"}\n{\"contents\": \"b\"}\n" + line + "\n{\"contents\": \"d\"}\n"
    report = validate_dataset(_dataset(tmp_path, text, [_line(positives=("0",), negatives=())]))
    errors = _messages(report.errors)
    assert errors == [f"{tmp_path / 'passages.jsonl'}:3: " + errors[0].split(":3: ", 1)[1]]
    assert message in errors[0], errors
    assert report.passages == 4


def test_invalid_utf8_and_windows_line_endings(tmp_path: Path) -> None:
    (tmp_path / "passages.jsonl").write_bytes(b"{\"contents\": \"a\"}\r\n{\"contents\": \"\xff\"}\r\n")
    write_jsonl(tmp_path / "train.jsonl", [_line(positives=("0",), negatives=())])
    errors = _messages(validate_dataset(tmp_path, train_n_passages=1).errors)
    assert errors == [f"{tmp_path / 'passages.jsonl'}:2: not valid UTF-8 (byte 15 of the line) (doc id 1)"]


def test_missing_files_and_directory(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path)
    assert _messages(report.errors) == [
        f"{tmp_path / 'passages.jsonl'}: file not found (a dataset needs passages.jsonl and train.jsonl)",
        f"{tmp_path / 'train.jsonl'}: file not found (a dataset needs passages.jsonl and train.jsonl)"]
    assert "not a directory" in str(validate_dataset(tmp_path / "nope").errors[0])


def test_empty_files_are_errors(tmp_path: Path) -> None:
    report = validate_dataset(_dataset(tmp_path, "", ""))
    assert any("no passages: the file is empty" in m for m in _messages(report.errors))


def test_warnings_duplicates_blank_lines_and_repeated_ids(tmp_path: Path) -> None:
    rows = "\n".join(json.dumps(r) for r in [
        _line("same", ("1",), ("2", "3")), _line("other", ("4", "4"), ("5", "6")), _line("same", ("7",), ("8", "9"))])
    report = validate_dataset(_dataset(tmp_path, PASSAGES, rows + "\n\n"), train_n_passages=3)
    assert report.ok
    path = tmp_path / "train.jsonl"
    assert _messages(report.warnings) == [
        f"{path}:2: positives: doc id 4 is listed twice (used once)",
        f"{path}:3: duplicate query (same text as line 1): both lines are trained on, and their positives are "
        "merged for false-negative masking",
        f"{path}:4: blank line ignored",
    ]
    assert report.positives == 3


def test_validation_stops_at_the_cap(tmp_path: Path) -> None:
    rows = [_line(positives=("99",)) for _ in range(50)]
    report = validate_dataset(_dataset(tmp_path, PASSAGES, rows), max_problems=7)
    assert len(report.errors) == 7 and report.stopped_early
    assert [p.line for p in report.errors] == list(range(1, 8))
    assert "stopped after 7 errors (the cap)" in report.lines()[-2]


def test_validation_streams_a_large_file(tmp_path: Path) -> None:
    """100,000 passages and queries validate line by line (the checksum equals the whole file's)."""
    n = 100_000
    with (tmp_path / "passages.jsonl").open("w") as f:
        for i in range(n):
            f.write(f"{{\"contents\": \"passage number {i}\"}}\n")
    with (tmp_path / "train.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps(_line(f"query {i}", (str(i),), (str((i + 1) % n),))) + "\n")
        f.write("{\"query\": \"bad\", \"positives\": {\"doc_id\": [\"100000\"]}}\n")
    report = validate_dataset(tmp_path, train_n_passages=2)
    assert report.passages == n and report.queries == n
    assert _messages(report.errors) == [f"{tmp_path / 'train.jsonl'}:{n + 1}: positives: doc id 100000 is out of "
                                        f"range: passages.jsonl has {n} passages (doc ids 0 to {n - 1})"]
    assert report.train_sha256 == file_sha256(tmp_path / "train.jsonl")


# -------------------------------------------------------------------------------------- reading


def test_passage_store_reads_by_doc_id(tmp_path: Path) -> None:
    (tmp_path / "passages.jsonl").write_text("{\"contents\": \"zéro\"}\r\n{\"contents\": \"one\"}\n"
                                             "{\"contents\": \"two\"}")
    store = PassageStore(tmp_path / "passages.jsonl")
    assert len(store) == 3
    assert store.texts([2, 0, 1]) == ["two", "zéro", "one"]
    assert list(store) == ["zéro", "one", "two"]
    with pytest.raises(InputError, match="doc id 3 is out of range"):
        store.text(3)
    store.close()


def test_read_examples_refuses_a_bad_line_and_points_to_validate(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [_line(), _line(positives=("77",))])
    with pytest.raises(InputError, match=re.escape("train.jsonl:2: positives: doc id 77 is out of range")):
        read_examples(tmp_path / "train.jsonl", 10)


# -------------------------------------------------------------------------------------- sampling


@pytest.fixture
def data(tmp_path: Path) -> TrainData:
    passages = [{"contents": f"p{i}"} for i in range(40)]
    rows = [
        _line("three positives", ("0", "1", "2"), [str(i) for i in range(10, 20)]),  # 10 negatives
        _line("no negatives", ("3",), ()),
        _line("two negatives", ("4",), ("21", "22")),
        _line("dup", ("5",), ("23", "24", "25")),
        _line("dup", ("6",), ("5", "26", "27")),  # "5" is a negative here but a positive of the same query above
        _line("plain", ("7",), ("28", "29", "30", "31")),
    ]
    return TrainData.load(_dataset(tmp_path, passages, rows))


def test_positives_rotate_over_epochs(data: TrainData) -> None:
    sampler = GroupSampler(data, batch_size=2, train_n_passages=4, seed=0)
    firsts = [sampler.group(0, epoch).doc_ids[0] for epoch in range(6)]
    assert sorted(firsts[:3]) == [0, 1, 2]  # every positive once in three epochs
    assert firsts[:3] == firsts[3:]
    assert all(sampler.group(1, e).doc_ids[0] == 3 for e in range(3))


def test_negative_windows_move_every_epoch_and_cover_all_negatives(data: TrainData) -> None:
    sampler = GroupSampler(data, batch_size=2, train_n_passages=4, seed=0)
    windows = [sampler.group(0, epoch).doc_ids[1:] for epoch in range(4)]
    assert all(len(w) == 3 and len(set(w)) == 3 for w in windows)
    assert len({tuple(w) for w in windows}) == 4  # a different window each epoch
    assert set().union(*windows[:4]) == set(range(10, 20))  # 4 windows of 3 cover all 10 negatives
    ex = data.examples[0]
    start = windows[0][0]
    assert windows[1][0] == ex.negatives[(ex.negatives.index(start) + 3) % 10]  # the window moved by 3


def test_short_groups_are_filled_with_non_positives_anew_each_epoch(data: TrainData) -> None:
    sampler = GroupSampler(data, batch_size=2, train_n_passages=4, seed=0)
    groups = [sampler.group(1, epoch) for epoch in range(3)]
    for g in groups:
        assert g.doc_ids[0] == 3 and len(g.doc_ids) == 4 and len(set(g.doc_ids)) == 4
    assert len({g.doc_ids for g in groups}) > 1
    partial = sampler.group(2, 0)
    assert partial.doc_ids[1:3] == (21, 22) and partial.doc_ids[3] not in (4, 21, 22)
    dup = sampler.group(4, 0)
    assert dup.positives == frozenset({5, 6})  # merged over both lines of the same query


def test_sampling_is_a_pure_function_of_seed_epoch_and_step(data: TrainData) -> None:
    a = GroupSampler(data, batch_size=2, train_n_passages=4, seed=7)
    b = GroupSampler(data, batch_size=2, train_n_passages=4, seed=7)
    c = GroupSampler(data, batch_size=2, train_n_passages=4, seed=8)
    assert a.steps_per_epoch == 3
    assert [a.batch(e, s) for e in range(3) for s in range(3)] == [b.batch(e, s) for e in range(3) for s in range(3)]
    assert [g.example for s in range(3) for g in a.batch(1, s)] == a.order(1).tolist()
    assert a.order(0).tolist() != a.order(1).tolist()
    assert a.order(0).tolist() != c.order(0).tolist()
    with pytest.raises(IndexError):
        a.batch(0, 3)


def test_sampler_refuses_impossible_settings(data: TrainData, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fewer than one batch of 7"):
        GroupSampler(data, batch_size=7, train_n_passages=4, seed=0)
    small = TrainData.load(_dataset(tmp_path / "s", [{"contents": "a"}, {"contents": "b"}],
                                    [_line("q", ("0",), ())]))
    with pytest.raises(InputError, match="only 1 passages that can be negatives"):
        GroupSampler(small, batch_size=1, train_n_passages=3, seed=0)


def test_toy_dataset_is_valid(tmp_path: Path) -> None:
    report = validate_dataset(toy_dataset(tmp_path), train_n_passages=4)
    assert report.ok and not report.warnings, report.lines()
