"""Latency series measured in interleaved blocks, so that a ratio compares calls made at the
same time.

These machines change speed by tens of per cent within seconds. Measured one after another
(300 calls of the baseline, then 300 of a read), a series can land in a fast second and its
baseline in a slow one: one run measured a SQLite read at 1.22x `give` in one round and 1.67x
in another. Here every series runs its warm-up calls, then its timed calls in `blocks` blocks;
each block runs a block of every series in turn, in an order drawn afresh for each block, so
that every series meets the machine's slow and fast moments alike, and none always follows the
same other (of two like `give` series, the one placed right after another server's block measured
0.05-0.23 ms slower at p50 than the one right after its own server's, with or without five
untimed calls first). A series' figures
cover all its blocks: its latency percentiles over all its calls, its CPU summed over them.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from testkit.measure import Phase, measure, timed_series
from testkit.processes import ServerProcess

ORDER_SEED = 20261206
"""The blocks' series come in a fresh order each block, the same orders every run."""

Prepare = Callable[[int], Callable[[], Awaitable[Any]]]
"""Builds a series' i-th call (its arguments and all) outside the timed region."""

PhaseScope = Callable[[ServerProcess, str], contextlib.AbstractContextManager[Any]]
"""Wraps each block of a series (the profiler's phase)."""


@dataclass
class Series:
    """One latency series: the server it calls, how its calls are built, what it measured."""

    server: ServerProcess
    prepare: Prepare
    phases: list[Phase] = field(default_factory=list[Phase])
    calls: int = 0

    def next_call(self, _i: int) -> Callable[[], Awaitable[Any]]:
        """The series' next call (calls are numbered across blocks: a chain of writes goes on)."""
        self.calls += 1
        return self.prepare(self.calls - 1)

    async def run(self, untimed: int, count: int) -> list[float]:
        """Make the series' next `untimed` calls (its warm-up), then `count` timed (inside
        `measure`, its clocks start after the untimed ones); return the timed calls' durations."""
        return await timed_series(untimed, count, self.next_call)


def block_sizes(n: int, blocks: int) -> list[int]:
    """`n` calls cut into `blocks` blocks (fewer if `n` is smaller) whose sizes differ by at most one."""
    blocks = max(1, min(blocks, n))
    return [n // blocks + (1 if b < n % blocks else 0) for b in range(blocks)]


def combined(phases: list[Phase]) -> Phase:
    """The phases of one series as one: all their samples, their times and CPU summed."""
    return Phase(
        samples=[s for p in phases for s in p.samples],
        wall_s=sum(p.wall_s for p in phases),
        server_cpu_s=sum(p.server_cpu_s for p in phases),
        client_cpu_s=sum(p.client_cpu_s for p in phases),
        machine_cpu_s=sum(p.machine_cpu_s for p in phases),
    )


def no_scope(_server: ServerProcess, _name: str) -> contextlib.AbstractContextManager[Any]:
    """A block wrapped in nothing."""
    return contextlib.nullcontext()


async def interleaved(
    series: dict[str, Series], warmup: int, n: int, blocks: int, scope: PhaseScope = no_scope
) -> dict[str, dict[str, Any]]:
    """Run every series' `warmup` calls, then its `n` timed calls in `blocks` interleaved
    blocks (`scope` around each); return each series' summary (`Phase.as_dict`) by name."""
    names = list(series)
    for name in names:
        await series[name].run(warmup, 0)
    order = random.Random(ORDER_SEED)
    for size in block_sizes(n, blocks):
        for name in order.sample(names, len(names)):
            one = series[name]

            async def body(one: Series = one, size: int = size) -> tuple[list[float], dict[str, Any]]:
                return await one.run(0, size), {}

            with scope(one.server, name):
                one.phases.append(await measure(one.server, body))
    return {name: combined(series[name].phases).as_dict() for name in names}
