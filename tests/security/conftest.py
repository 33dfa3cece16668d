"""The security tests' real server: one per test module (a module may change server-wide state, such as the
admin token), started with the default flags. Modules that need other flags define their own fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.server import ServerProcess


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    proc = ServerProcess(root / "data", root / "logs")
    proc.start()
    yield proc
    proc.stop()
