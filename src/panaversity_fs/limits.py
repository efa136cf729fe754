"""Limits that keep one agent, or too many callers, from taking the server down.

- `RateLimiter`: per-agent token buckets for reads, writes and refused calls. A bucket
  refills at the configured rate per minute and holds `burst` minutes of it; an empty bucket
  refuses the call with `RATE_LIMITED` and the seconds until one call is allowed again.
- `LoadShedder`: a bound on tool calls running at once. A call that finds every slot taken
  waits a short while; if no slot frees up in time, or too many calls are already waiting, it
  is refused with `UNAVAILABLE` and a retry hint instead of timing out later (L-6).
- `StreamSlots`: a bound on archive downloads streaming at once, in all and per agent; each
  holds buffers and a thread for as long as its client reads.

All counters are per process: N replicas allow N times the rate (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from panaversity_fs.errors import RateLimited, Unavailable

Kind = Literal["read", "write", "refusal"]
MAX_TRACKED = 10_000
"""Agents (or addresses) whose buckets are kept; the least recently seen are forgotten first."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by key: `rate` tokens per second, at most `capacity` saved up."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._capacity = max(1.0, capacity)
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Take one token for `key`; None if there was one, else seconds until there is."""
        now = self._clock()
        bucket = self._buckets.pop(key, None) or _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._rate

    def empty(self, key: str) -> float | None:
        """Seconds until `key` has a token again, or None if it has one now (nothing taken)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        tokens = min(self._capacity, bucket.tokens + (self._clock() - bucket.stamp) * self._rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self._rate


class RateLimiter:
    """Per-agent budgets of reads, writes and refused calls; a limit of 0 per minute turns that
    kind off. A refused call spends from its kind's budget and, if it was denied, from the
    refusal budget too (an agent probing for what it may do is slowed down early)."""

    def __init__(
        self,
        reads_per_minute: int,
        writes_per_minute: int,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        refusals_per_minute: int = 0,
    ) -> None:
        self._buckets: dict[Kind, TokenBuckets | None] = {
            "read": token_buckets(reads_per_minute, burst, clock),
            "write": token_buckets(writes_per_minute, burst, clock),
            "refusal": token_buckets(refusals_per_minute, burst, clock),
        }

    def check(self, agent_id: str, kind: Kind) -> None:
        """Count one call of `kind` by `agent_id`.

        Raises:
            RateLimited: the agent is over its budget; `retry_after` says when to try again.
        """
        buckets = self._buckets[kind]
        if buckets is None:
            return
        wait = buckets.take(agent_id)
        if wait is not None:
            retry_after = math.ceil(wait * 10) / 10
            what = "refused calls" if kind == "refusal" else f"{kind}s"
            raise RateLimited(
                f"too many {what} by this agent; retry after {retry_after} s",
                retry_after=retry_after,
                limit=kind,
            )


def token_buckets(per_minute: int, burst: float, clock: Callable[[], float]) -> TokenBuckets | None:
    """Buckets refilling `per_minute` tokens a minute and holding `burst` minutes of them (None: 0,
    no limit)."""
    return TokenBuckets(per_minute / 60.0, per_minute * burst, clock) if per_minute > 0 else None


class LoadShedder:
    """At most `max_running` tool calls at once; a call waits at most `max_wait` seconds for a slot."""

    def __init__(self, max_running: int, max_waiting: int, max_wait: float) -> None:
        self._slots = asyncio.Semaphore(max_running)
        self._max_waiting = max_waiting
        self._max_wait = max_wait
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncGenerator[None, None]:
        """Hold a slot for the duration of one call.

        Raises:
            Unavailable: no slot freed up in time, or the waiting line is full (`retry_after`).
        """
        if self._slots.locked():
            if self.waiting >= self._max_waiting:
                raise self._overloaded()
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self._max_wait)
            except TimeoutError:
                raise self._overloaded() from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()

    def _overloaded(self) -> Unavailable:
        return Unavailable(
            "the server is overloaded; nothing was done, retry shortly",
            retry_after=max(0.5, round(self._max_wait, 1)),
            overloaded=True,
        )


class StreamSlots:
    """At most `total` long-running streams at once, and at most `per_agent` of one agent."""

    RETRY_AFTER = 5.0

    def __init__(self, total: int, per_agent: int) -> None:
        self._total = total
        self._per_agent = per_agent
        self._running: dict[str, int] = {}

    @property
    def running(self) -> int:
        """Streams running now."""
        return sum(self._running.values())

    def take(self, agent: str) -> Callable[[], None]:
        """Take a slot for `agent`; return the function that gives it back (once).

        Raises:
            RateLimited: the agent already runs `per_agent` streams.
            Unavailable: `total` streams are running (`overloaded`).
        """
        if self._running.get(agent, 0) >= self._per_agent:
            raise RateLimited(
                f"this agent already runs {self._per_agent} archive downloads; finish one, then retry",
                retry_after=self.RETRY_AFTER,
                limit="archive",
            )
        if self.running >= self._total:
            raise Unavailable(
                "too many archive downloads are running; retry shortly",
                retry_after=self.RETRY_AFTER,
                overloaded=True,
            )
        self._running[agent] = self._running.get(agent, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._running[agent] - 1
            if left:
                self._running[agent] = left
            else:
                del self._running[agent]

        return release
