"""SIGKILL during ``e5studio kb create`` and ``kb reembed`` (the real CLI in a subprocess): a rerun resumes
with no duplicate and no missing chunk, and the knowledge base answers from its complete version meanwhile."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from e5studio.control.store import Store
from e5studio.jobs.kb import ops
from e5studio.settings import EngineSettings
from tests.batch_embed.conftest import cli_env
from tests.kb.conftest import long_documents, write_jsonl


def _cli(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "e5studio", "kb", *args, "--data-dir", str(data_dir), "--no-progress",
            "--window-size", "4", "--threads", "1", "--workers", "1", "--device", "cpu"]


def _kill_after_first_shard(cmd: list[str], batches: str, root: Path, skip: str = "") -> None:
    """Start ``cmd``, SIGKILL it once a manifest matching ``root.glob(batches)`` lists a shard (before the batch
    is complete)."""
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    manifest = None
    try:
        while time.monotonic() < deadline and manifest is None:
            for path in root.glob(batches + "/manifest.json"):
                if skip and skip in str(path):
                    continue
                try:
                    if json.loads(path.read_text())["shards"]:
                        manifest = path
                except ValueError:
                    pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert manifest is not None
    assert json.loads(manifest.read_text())["status"] != "complete", "killed too late: the batch was complete"


def _rows(folder: Path) -> list[tuple[str, int, str, int, int]]:
    rows = []
    for shard in sorted(folder.rglob("shards/part-*.parquet")):
        t = pq.read_table(shard, columns=["doc_id", "chunk", "text", "start", "end"]).to_pylist()
        rows += [(r["doc_id"], r["chunk"], r["text"], r["start"], r["end"]) for r in t]
    return sorted(rows)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_sigkill_during_create_and_reembed_resumes_exactly(tmp_path: Path, tiny_dir: Path) -> None:
    data_dir = tmp_path / "data"
    with Store(data_dir / "e5studio.db") as store:
        store.create_project("default")
        store.create_endpoint("default", "ep", str(tiny_dir), 32)
        store.create_endpoint("default", "ep2", str(tiny_dir), 32, precision="int8")
    corpus = write_jsonl(tmp_path / "docs.jsonl", long_documents(120, seed=5))
    flags = ["--endpoint", "ep", "--data", str(corpus), "--id-field", "id", "--chunk-tokens", "40", "--overlap", "8"]
    _run(_cli(data_dir, "create", "ref", *flags))  # the reference: built without a crash
    with Store(data_dir / "e5studio.db") as store:
        ref = store.get_kb("default", "ref")
        reference = _rows(Path(store.current_kb_version("default", "ref")[1].path))

    _kill_after_first_shard(_cli(data_dir, "create", "kb1", *flags), "kb/*/v1/batches/0000", data_dir,
                            skip=ref.id)
    with Store(data_dir / "e5studio.db") as store, pytest.raises(Exception, match="no complete version yet"):
        store.current_kb_version("default", "kb1")
    out = _run(_cli(data_dir, "create", "kb1", *flags))
    assert "continuing" in out
    with Store(data_dir / "e5studio.db") as store:
        kb, version = store.current_kb_version("default", "kb1")
        assert _rows(Path(version.path)) == reference  # no duplicate, no missing chunk
        before = [h.to_json() for h in ops.search(store, "default", "kb1", "protein kinase", 5, None, False,
                                                  _engine())]

    # SIGKILL during a re-embedding: searches still answer from version 1; the rerun finishes version 2
    _kill_after_first_shard(_cli(data_dir, "reembed", "kb1", "--endpoint", "ep2"), f"kb/{kb.id}/v2/batches/0000",
                            data_dir)
    with Store(data_dir / "e5studio.db") as store:
        assert store.get_kb("default", "kb1").current_version == 1
        during = [h.to_json() for h in ops.search(store, "default", "kb1", "protein kinase", 5, None, False,
                                                  _engine())]
        assert during == before
    out = _run(_cli(data_dir, "reembed", "kb1"))
    assert "continuing version 2" in out
    with Store(data_dir / "e5studio.db") as store:
        kb, version = store.current_kb_version("default", "kb1")
        assert version.version == 2 and version.stamp["precision"] == "int8"
        assert _rows(Path(version.path)) == reference  # the same documents, chunked the same, none twice


def _engine() -> EngineSettings:
    return EngineSettings(model="unused", device="cpu", threads=1)
