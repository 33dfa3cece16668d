"""``e5studio models list`` for a newcomer: the bundled MiniLM first (what ``make serve`` uses, offline), then the
cache; with an empty cache it says whether ``models pull`` can work from here (issue 27, point 4)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.hub.fake_hub import FakeHub


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E5STUDIO_", "HF_"))}
    env.update(HF_HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def _list(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "e5studio", "models", "list"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_lists_the_bundled_model_and_says_the_hub_is_unreachable(tmp_path: Path) -> None:
    out = _list(_env(tmp_path / "hf", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}"))
    assert "sentence-transformers/all-MiniLM-L6-v2" in out and "bundled" in out and "all-minilm-l6-v2" in out, out
    assert "works offline" in out
    assert "not reachable" in out and "models pull" not in out, out  # no advice that cannot work here
    assert "--model ./models/e5-large-v2" in out


def test_offline_mode_is_named(tmp_path: Path) -> None:
    out = _list(_env(tmp_path / "hf", HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE is set" in out, out


def test_a_reachable_hub_gets_the_pull_hint(tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "empty-hub")
    try:
        out = _list(_env(tmp_path / "hf", HF_ENDPOINT=hub.url))
    finally:
        hub.close()
    assert "models pull e5-large-v2" in out and "not reachable" not in out, out
