"""The security tests' real server: one per test module (a module may change server-wide state, such as the
admin token), started with the default flags. Modules that need other flags define their own fixture.

Every server of these tests serves the tiny random model: no test here embeds, what they check does not depend on
the model, and it loads in a blink where MiniLM takes seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.server import ServerProcess


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           tiny_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    proc = ServerProcess(root / "data", root / "logs", model=str(tiny_dir))
    proc.start()
    yield proc
    proc.stop()
