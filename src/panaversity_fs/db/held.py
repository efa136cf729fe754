"""PostgreSQL connections the hot path keeps between calls instead of handing back to the pool.

A read's look-up is one statement the driver sends (`Database.fetch_prepared`); checking its
connection out of SQLAlchemy's pool and back in (a greenlet, the pool's queue, its events, the
reset on return) cost it about 70 us of CPU here, as much as the statement itself (140 against
70 us a look-up, 3,000 in process). An update's one-statement commit and its publish, both
transactions the driver runs (`driver_writes.driver_connection`), paid the same. So each of the
three hands its connection, once its statement or transaction succeeded, to a `HeldConnections`
of its own, and the next call of its kind takes it from there.

Held connections stay checked out of the pool, so few are held (`held_per_use`), and never so
many that other transactions could not get a connection. One held longer than `max_idle` goes
back to the pool marked with the time it was last used, so the pool's checkout pings it as it
pings any connection idle that long (`engine._ping_after_idle`): held or pooled, a connection
that sat idle is checked before a call relies on it, and one used moments ago is not. When a
call fails (a database restart, say), or SQLAlchemy sees any connection lost (it then
invalidates its whole pool, `Database._release_held_on_disconnect`), every connection held by
any use goes back to the pool, where that handling applies to them as to any pooled one
(forcing a ping on each instead made calls during a database hang wait on those pings, past
their deadline).
"""

from __future__ import annotations

import time
from typing import Any, Generic, Protocol, TypeVar

IDLE_SINCE = "pfs_idle_since"
"""Key of a pooled connection's `info`: when it was last handed back (monotonic seconds)."""

MAX_HELD = 2
"""Connections one use holds at most: one for a call in flight while another one finishes, one
spare."""


def held_per_use(pool_size: int, max_overflow: int) -> int:
    """How many connections each use may hold for a pool of `pool_size` + `max_overflow`: up to
    `MAX_HELD`, and all uses together at most three eighths of the pool (none for a pool of fewer
    than eight)."""
    return min(MAX_HELD, (pool_size + max_overflow) // 8)


class Checkout(Protocol):
    """A connection checked out of the pool: a bare pooled one, or SQLAlchemy's `Connection`."""

    @property
    def info(self) -> dict[Any, Any]: ...

    def close(self) -> None: ...


_C = TypeVar("_C", bound=Checkout)


class HeldConnections(Generic[_C]):
    """Up to `limit` idle checked-out connections kept for the next call (last in, first out),
    one of the `group` of every use's (which it joins)."""

    def __init__(self, limit: int, max_idle: float, group: list[HeldConnections[Any]]) -> None:
        self._limit = limit
        self._max_idle = max_idle
        self._held: list[tuple[_C, float]] = []
        self._group = group
        group.append(self)

    def take(self) -> _C | None:
        """A held connection used less than `max_idle` seconds ago, or None (check one out of the
        pool). Older ones go back to the pool, whose next checkout pings them."""
        now = time.monotonic()
        while self._held:
            pooled, since = self._held.pop()
            if now - since < self._max_idle:
                return pooled
            self._to_pool(pooled, since)
        return None

    def give_back(self, pooled: _C) -> None:
        """Hold `pooled` (a connection whose last statement or transaction succeeded, in no
        transaction) for the next call, or hand it back to the pool if `limit` are held already."""
        if len(self._held) < self._limit:
            self._held.append((pooled, time.monotonic()))
        else:
            pooled.close()

    def held(self) -> list[_C]:
        """The connections held now (most recently used last)."""
        return [pooled for pooled, _since in self._held]

    def release_all(self) -> None:
        """Hand every held connection back to the pool (before the pool is disposed)."""
        while self._held:
            self._to_pool(*self._held.pop())

    def failed(self) -> None:
        """A call of this use failed: hand every connection of the group back to the pool."""
        for use in self._group:
            use.release_all()

    @staticmethod
    def _to_pool(pooled: _C, since: float) -> None:
        info = pooled.info
        pooled.close()
        info[IDLE_SINCE] = since  # the pool's check-in noted "now": it has been idle since then
