"""The load check, short: ``benchmarks/replicas_load.py`` with 8 clients for 10 s over both replicas of the pair
(the default endpoint); every answer is checked against each text's own reference vector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.replicas.cluster import Group
from tests.serving.server import cli_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "replicas_load.py"


def test_eight_clients_over_two_replicas_get_no_errors_and_no_mixed_rows(pair: Group) -> None:
    a, b = pair.replicas
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--replica", a.base_url, "--replica", b.base_url, "--endpoint-path",
         urlsplit(pair.default_url).path, "--key", pair.default_key, "--clients", "8", "--seconds", "10",
         "--texts", "64", "--json"], capture_output=True, text=True, env=cli_env(), timeout=180,
        stdin=subprocess.DEVNULL)
    assert result.stdout.strip(), result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["errors"] == {}, result.stdout
    assert (summary["mixed_rows"], summary["swapped_rows"]) == (0, 0), result.stdout
    assert summary["requests"] > 0 and summary["rows"] >= summary["requests"], result.stdout
    assert set(summary["by_replica"]) == {a.base_url, b.base_url}, result.stdout  # both replicas answered
    assert min(summary["by_replica"].values()) >= summary["requests"] // 3, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
