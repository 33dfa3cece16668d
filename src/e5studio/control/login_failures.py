"""Failed logins per client address, in the store so that every server sharing it throttles them together
(:class:`e5studio.serving.throttle.LoginThrottle` decides; this only records and counts)."""

from __future__ import annotations

import sqlalchemy as sa

from e5studio.control.database import Database
from e5studio.control.schema import login_failures

_F = login_failures.c
MAX_FAILURE_ROWS = 100_000  # failures kept at most (a spray from many addresses cannot grow the table further)
_CAP_EVERY = 100  # the cap is enforced once per this many recorded failures (of this process)


class LoginFailureTable(Database):
    _failures_recorded = 0

    def record_login_failure(self, address: str, at: float, forget_before: float) -> None:
        """Record a failed login of ``address`` at ``at`` (seconds since the epoch); failures at or before
        ``forget_before`` (out of every window) are deleted, and the table never holds more than
        :data:`MAX_FAILURE_ROWS` (the oldest go first)."""
        with self._write(serial=False) as conn:
            conn.execute(login_failures.insert().values(address=address, failed_at=at))
            conn.execute(login_failures.delete().where(_F.failed_at <= forget_before))
            self._failures_recorded += 1
            if self._failures_recorded % _CAP_EVERY == 0:
                newest = sa.select(_F.id).order_by(_F.failed_at.desc(), _F.id.desc()).limit(MAX_FAILURE_ROWS)
                conn.execute(login_failures.delete().where(_F.id.not_in(newest)))

    def login_failures(self, address: str, since: float) -> list[float]:
        """When ``address`` failed after ``since``, oldest first."""
        rows = self._read_all(sa.select(_F.failed_at).where(_F.address == address, _F.failed_at > since)
                              .order_by(_F.failed_at))
        return [float(row["failed_at"]) for row in rows]
