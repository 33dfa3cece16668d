"""The engine files one request runs, traced on every thread: a request stays short and calls nothing back.

``Embedder.tokenize`` then ``Embedder.embed_ids`` (what serving calls) run in ``embedder.py``, ``tokenizer.py``
and the module of the runtime the plan picks, whichever that is, and in no other engine file.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from e5studio.engine import bert, embedder, int8_kernels
from e5studio.engine.embedder import Embedder
from e5studio.settings import EngineSettings

ENGINE = Path(embedder.__file__).parent
_recording: list[str] | None = None  # what the profile hook appends to while a trace runs


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    seen, path = _recording, Path(frame.f_code.co_filename)
    if seen is not None and event == "call" and path.parent == ENGINE and path.name not in seen:
        seen.append(path.name)


def engine_files(call: Callable[[], object]) -> list[str]:
    """The engine source files whose code ``call`` runs, in the order first entered: in this thread and in
    threads started during a trace (a worker keeps the hook, and reports to every later trace)."""
    global _recording
    _recording = seen = []
    threading.setprofile(_profile)  # type: ignore[arg-type]
    sys.setprofile(_profile)  # type: ignore[arg-type]
    try:
        call()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        _recording = None
    return seen


def _request(engine: Embedder, texts: list[str]) -> Callable[[], object]:
    def call() -> object:
        return engine.embed_ids(engine.tokenize(texts))
    call()  # warm: what a first request loads once is not the request's path
    return call


@pytest.mark.parametrize(("cpu_runtime", "runtime_file"), [("auto", "onnx_graph.py"), ("torch", "bert.py")])
def test_a_single_query_runs_in_three_engine_files(tiny_dir: Path, cpu_runtime: str, runtime_file: str) -> None:
    if cpu_runtime == "torch" and not bert.onednn_available():
        pytest.skip("this torch build has no oneDNN linear ops: no few-token runtime")
    engine = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime=cpu_runtime))
    assert engine.runtime_for(engine.tokenize(["query: how do cells divide?"])) is engine.plan.few

    files = engine_files(_request(engine, ["query: how do cells divide?"]))

    assert files == ["embedder.py", "tokenizer.py", runtime_file]


def test_many_rows_run_in_three_engine_files_also_on_the_workers(tiny_dir: Path) -> None:
    engine = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", threads=2, max_batch_tokens=64))
    texts = [f"passage: {'many words in a passage ' * n}" for n in range(1, 12)]
    assert engine.workers == 2
    _request(engine, texts[:1])  # warm, on one micro-batch: the worker threads are not started yet

    def request() -> object:
        return engine.embed_ids(engine.tokenize(texts))  # several micro-batches: on the worker threads

    try:
        first = engine_files(request)  # the workers start here, under the trace
        files = engine_files(request)
    finally:
        assert engine._pool is not None
        engine._pool.shutdown(wait=True)

    assert first == ["embedder.py", "tokenizer.py", "device.py", "bert.py"]  # device.py: the workers start, once
    assert files == ["embedder.py", "tokenizer.py", "bert.py"]


@pytest.mark.skipif(not int8_kernels.available(), reason="this torch build has no FBGEMM kernels")
@pytest.mark.parametrize(("cpu_runtime", "expected"), [
    ("auto", ["embedder.py", "tokenizer.py", "onnx_graph.py"]),  # the compiled int8 graph: one session.run
    ("torch", ["embedder.py", "tokenizer.py", "bert.py", "int8_kernels.py"]),  # FBGEMM's kernels
])
def test_int8_adds_its_kernels_only(tiny_dir: Path, cpu_runtime: str, expected: list[str]) -> None:
    engine = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", precision="int8",
                                          cpu_runtime=cpu_runtime))

    files = engine_files(_request(engine, ["query: how do cells divide?"]))

    assert files == expected
