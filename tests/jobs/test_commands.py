"""The datasets commands through the real CLI entry point: validate, add, list, mine-negatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from e5studio.cli import main
from e5studio.control.store import Store
from e5studio.engine.embedder import Embedder
from e5studio.jobs.train.mining import mine_negatives
from e5studio.jobspec.dataset_format import validate_dataset
from e5studio.retrieval.search import exact_search
from e5studio.settings import EngineSettings
from tests import stores

EXAMPLE = Path(__file__).parent / "platform_example"


def test_validate_prints_every_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "validate", str(EXAMPLE), "--train-n-passages", "3"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"error: {EXAMPLE / 'passages.jsonl'}:2: malformed JSON: the value of \"contents\"")
    assert out[1].startswith(f"error: {EXAMPLE / 'train.jsonl'}:2: malformed JSON at column 2")
    assert out[-1] == f"{EXAMPLE}: INVALID (2 errors): 4 passages, 2 queries, 2 positive pairs, 4 negatives, 0 warnings"


def test_an_invalid_dataset_is_not_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = str(tmp_path / "store")
    assert main(["datasets", "add", "example", str(EXAMPLE), "--data-dir", data_dir]) == 2
    captured = capsys.readouterr()
    assert "e5studio: error: dataset 'example' not recorded: 2 errors (listed above)" in captured.err
    assert "Traceback" not in captured.err
    assert main(["datasets", "list", "--data-dir", data_dir]) == 0
    assert "no datasets" in capsys.readouterr().out


def test_add_list_and_versions(store_target: str, tmp_path: Path, toy_dir: Path,
                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On the SQLite store of --data-dir, and on a PostgreSQL store (--store URL, or $E5STUDIO_STORE)."""
    data_dir = str(tmp_path / "data")
    where = ["--data-dir", data_dir] + (["--store", store_target] if "://" in store_target else [])
    assert main(["datasets", "add", "toy", str(toy_dir), *where, "--description", "t"]) == 0
    assert "recorded dataset toy@1" in capsys.readouterr().out
    if "://" in store_target:
        monkeypatch.setenv("E5STUDIO_STORE", store_target)
        where = ["--data-dir", str(tmp_path / "elsewhere")]
    assert main(["datasets", "list", *where]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("toy@1") and "32 passages" in line and "24 queries" in line and str(toy_dir) in line
    with Store(store_target) as store:
        dataset = store.get_dataset("toy")
    report = validate_dataset(toy_dir)
    assert (dataset.passages_sha256, dataset.train_sha256) == (report.passages_sha256, report.train_sha256)


def test_mine_negatives_records_a_new_version(tmp_path: Path, toy_dir: Path, tiny_nodropout_dir: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "store"
    for name, value in stores.store_env(data_dir).items():
        monkeypatch.setenv(name, value)
    assert main(["datasets", "add", "toy", str(toy_dir), "--data-dir", str(data_dir)]) == 0
    assert main(["datasets", "mine-negatives", "toy", "--model", str(tiny_nodropout_dir), "--top-k", "4",
                 "--skip-top", "2", "--device", "cpu", "--data-dir", str(data_dir)]) == 0
    assert "recorded dataset toy@2" in capsys.readouterr().out
    with Store(stores.store_for(data_dir)) as store:
        first, second = store.get_dataset("toy@1"), store.get_dataset("toy")
    assert second.version == 2 and second.parent_id == first.id and second.passages_sha256 == first.passages_sha256
    folder = Path(second.path)
    assert folder == (data_dir / "datasets" / "toy" / "v2").resolve()
    # the same passages (a hard link: the same file, no second copy), and not a symbolic link out of the folder
    assert not (folder / "passages.jsonl").is_symlink()
    assert (folder / "passages.jsonl").samefile(toy_dir / "passages.jsonl")
    assert validate_dataset(folder).ok
    original = [json.loads(x) for x in (toy_dir / "train.jsonl").read_text().splitlines()]
    mined = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    for before, after in zip(original, mined, strict=True):
        assert after["query"] == before["query"] and after["positives"] == before["positives"]
        negatives = after["negatives"]["doc_id"]
        assert negatives[:5] == before["negatives"]["doc_id"]  # existing negatives kept first
        assert not set(negatives) & set(before["positives"]["doc_id"])
        assert len(negatives) == len(set(negatives)) <= 9


def test_mining_skips_the_top_non_positives(tmp_path: Path, toy_dir: Path, tiny_nodropout_dir: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "passages.jsonl").write_text((toy_dir / "passages.jsonl").read_text())
    rows = [json.loads(x) for x in (toy_dir / "train.jsonl").read_text().splitlines()][:3]
    for row in rows:
        row["negatives"] = {"doc_id": []}
    (source / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    embedder = Embedder.load(EngineSettings(model=str(tiny_nodropout_dir), device="cpu"))
    result = mine_negatives(source, tmp_path / "out", embedder, top_k=3, skip_top=2)
    assert (result.queries, result.negatives_added) == (3, 9)
    passages = [json.loads(x)["contents"] for x in (source / "passages.jsonl").read_text().splitlines()]
    corpus = embedder.embed(passages, input_type="passage")
    queries = embedder.embed([r["query"] for r in rows], input_type="query")
    _, ranked = exact_search(queries, corpus, len(passages))
    mined = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    for row, ranking, out in zip(rows, ranked, mined, strict=True):
        positives = {int(d) for d in row["positives"]["doc_id"]}
        expected = [int(d) for d in ranking if int(d) not in positives][2:5]
        assert [int(d) for d in out["negatives"]["doc_id"]] == expected
    assert np.isfinite(corpus).all()


def test_train_needs_a_recorded_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "nope", "--model", "x", "--output", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path / "store")]) == 2
    assert "dataset 'nope' not found" in capsys.readouterr().err
