"""The package files one inference request runs stay few enough to read in one sitting (issue 22).

The app runs in-process (tiny random checkpoint) with a profiler on every thread it starts (the event loop,
the batcher's worker, the engine's and asyncio's worker threads). The files seen while the server is idle
(its background rounds: job polls, model-pool sync, heartbeats) are traced first and subtracted; then one
request of each inference route is traced. What is left is the files of the request path, in the order they
were first entered, and ``docs/architecture.md`` lists exactly these.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from fastapi.testclient import TestClient

import e5studio
from e5studio.app import create_app
from e5studio.control.store import Store
from e5studio.serving.state import state_of
from e5studio.settings import EngineSettings, ServeSettings
from tests import stores

PACKAGE = Path(e5studio.__file__).resolve().parent
PACKAGE_PREFIX = str(PACKAGE) + "/"
MAX_FILES = 10  # the whole request: serving side and engine together
MAX_SERVING_FILES = 7  # routes, service, batcher, edge, body reader, key check
# the engine side: the engine and the floors below it, which only the engine calls on this path
ENGINE_SIDE = ("engine/", "errors.py", "settings.py", "vocabulary.py")
IDLE_S = 4.5  # more than two rounds of every background task (job poll and pool sync 1 s, heartbeat 2 s)


@dataclass
class Tracer:
    """A profile function for every thread: the package files entered while ``recording``, in first-seen order."""

    recording: bool = False
    seen: dict[str, set[str]] = field(default_factory=dict)  # file -> names of the threads that ran it

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and self.recording:
            name = frame.f_code.co_filename
            if name.startswith(PACKAGE_PREFIX):
                self.seen.setdefault(name[len(PACKAGE_PREFIX):], set()).add(threading.current_thread().name)

    def window(self, seconds: float = 0.0) -> dict[str, set[str]]:
        self.seen = {}
        self.recording = True
        time.sleep(seconds)
        return self.seen

    def stop(self) -> dict[str, set[str]]:
        self.recording = False
        return self.seen



@dataclass(frozen=True)
class Trace:
    request_files: list[str]  # package files of the requests, background files subtracted, first-seen order
    threads: dict[str, set[str]]
    idle_files: set[str]

    @property
    def engine(self) -> list[str]:
        return [f for f in self.request_files if f.startswith(ENGINE_SIDE)]

    @property
    def serving(self) -> list[str]:
        return [f for f in self.request_files if not f.startswith(ENGINE_SIDE)]

    def report(self) -> str:
        lines = [f"{len(self.request_files)} package files run by the requests ({len(self.serving)} serving side, "
                 f"{len(self.engine)} engine), in the order first entered:"]
        lines += [f"  {f}  [{', '.join(sorted(self.threads[f]))}]" for f in self.request_files]
        lines.append(f"subtracted (also run by background threads while idle): {', '.join(sorted(self.idle_files))}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[Trace]:
    data_dir = tmp_path_factory.mktemp("trace")
    store = Store(stores.store_for(data_dir))
    store.create_project("p")
    endpoint, key = store.create_endpoint("p", "tiny", str(tiny_dir), 32)
    settings = ServeSettings(data_dir=data_dir, default_model=str(tiny_dir),
                             engine=EngineSettings(model=str(tiny_dir), device="cpu"))
    tracer = Tracer()
    threading.setprofile(tracer)  # every thread started from here on: the loop, workers, the batcher
    sys.setprofile(tracer)
    try:
        app = create_app(settings, store)
        with TestClient(app) as client:
            assert state_of(app).pool.wait(60)
            sambastudio = {"key": key}
            openai = {"Authorization": f"Bearer {key}"}
            tail = f"p/{endpoint.name}"
            calls: list[tuple[str, dict[str, Any], dict[str, str]]] = [
                (f"/api/predict/nlp/{tail}", {"inputs": ["query: how much protein"]}, sambastudio),
                (f"/api/predict/generic/{tail}", {"instances": ["query: how much protein"]}, sambastudio),
                (f"/api/v2/predict/generic/{tail}", {"items": [{"id": "a", "value": "query: protein"}]}, sambastudio),
                ("/v1/embeddings", {"model": "tiny", "input": "query: how much protein"}, openai),
            ]
            for path, body, headers in calls:  # first calls warm up what runs once (lazy imports, caches)
                assert client.post(path, json=body, headers=headers).status_code == 200
            idle = tracer.window(IDLE_S)
            tracer.stop()
            tracer.window()
            for path, body, headers in calls:
                answer = client.post(path, json=body, headers=headers)
                assert answer.status_code == 200, answer.text
            seen = tracer.stop()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        store.close()
    files = [f for f in seen if f not in idle]
    yield Trace(files, seen, set(idle))


def test_the_request_path_runs_on_few_serving_files(trace: Trace) -> None:
    print(trace.report())
    assert trace.serving, trace.report()  # the tracer saw the requests at all
    assert len(trace.serving) <= MAX_SERVING_FILES, trace.report()


def test_one_request_runs_in_at_most_ten_package_files(trace: Trace) -> None:
    print(trace.report())
    assert trace.engine, trace.report()  # the engine computed on a traced thread
    assert len(trace.request_files) <= MAX_FILES, trace.report()


def documented_request_files() -> list[str]:
    """The numbered file list of docs/architecture.md's request-flow section, in its order."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## How one inference request flows", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([\w/]+\.py)`", section, re.M)


def test_the_map_lists_exactly_the_traced_files_in_their_order(trace: Trace) -> None:
    """The doc's list is the traced files in their order; a listed file the trace did not keep must be one the
    background threads also ran while idle (the trace cannot tell those apart, e.g. the batcher's module when
    the pool sync reads its state)."""
    documented = documented_request_files()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert documented, "docs/architecture.md has no numbered file list under 'How one inference request flows'"
    assert f"flows ({len(documented)} files)" in doc
    assert len(documented) <= MAX_FILES
    missing = [f for f in trace.request_files if f not in documented]
    assert not missing, f"docs/architecture.md does not list {missing}; the trace saw\n{trace.report()}"
    extra = [f for f in documented if f not in trace.request_files and f not in trace.idle_files]
    assert not extra, f"docs/architecture.md lists {extra}, which no thread ran; the trace saw\n{trace.report()}"
    assert [f for f in documented if f in trace.request_files] == trace.request_files, (
        f"docs/architecture.md lists the files in another order: {documented}\n{trace.report()}")
