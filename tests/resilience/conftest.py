"""Fixtures of the resilience tests: a TCP proxy between e5studio and the session's PostgreSQL that a test makes
hang (a stopped server, a partition) or reset (a killed server), without disturbing the other tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.resilience.proxy import PgProxy


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[PgProxy]:
    proxy = PgProxy.for_url(postgres_url).start()
    yield proxy
    proxy.close()
