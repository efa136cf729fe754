"""Measuring: percentiles, CPU seconds of a process and of the machine, a process's RSS, timed
call series, and what machine a result came from."""

from __future__ import annotations

import contextlib
import contextvars
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil

from testkit.processes import REPO, ServerProcess


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of `samples`, by linear interpolation."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50/p95/mean/min/max of `samples` (seconds) in milliseconds."""
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 0.50) * 1000, 3),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
        "min_ms": round(min(samples) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` and its live children (0 if gone).

    Children count because `serve --workers N` serves from N child processes of a supervisor.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(child)) for child in children)


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def background_cpu_pct(window: float = 2.0) -> float:
    """CPU the machine spends busy over `window` seconds, in % of one core (this process idle)."""
    before = machine_busy_seconds()
    time.sleep(window)
    return 100 * (machine_busy_seconds() - before) / window


def wait_quiet(max_wait: float, threshold: float = 15.0) -> list[float]:
    """Wait up to `max_wait` s for a 2 s window with < `threshold` % background CPU; return the samples."""
    samples = [background_cpu_pct()]
    deadline = time.monotonic() + max_wait
    while samples[-1] >= threshold and time.monotonic() < deadline:
        if len(samples) % 15 == 1:
            print(f"  waiting for a quiet machine: other processes use {samples[-1]:.0f}% of one core")
        samples.append(background_cpu_pct())
    return [round(x, 1) for x in samples]


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, RAM, Python and library versions, git commit."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "fastmcp": version("fastmcp"),
        "sqlalchemy": version("sqlalchemy"),
        "git": commit,
    }


async def timed_series(
    warmup: int, n: int, prepare: Callable[[int], Callable[[], Awaitable[Any]]]
) -> list[float]:
    """Run `warmup` + `n` sequential calls; return the n timed durations (seconds).

    `prepare(i)` builds the i-th call (arguments and all) outside the timed region. Inside
    `measure`, the clocks start after the warm-up calls (`_warmed_up`).
    """
    samples: list[float] = []
    for i in range(warmup + n):
        if i == warmup:
            _warmed_up()
        op = prepare(i)
        started = time.perf_counter()
        await op()
        elapsed = time.perf_counter() - started
        if i >= warmup:
            samples.append(elapsed)
    return samples


@dataclass
class Phase:
    """One measured phase: latency samples plus the CPU both sides spent."""

    samples: list[float]
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    machine_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The phase's summary (no raw samples)."""
        out: dict[str, Any] = dict(summary_ms(self.samples)) if self.samples else {"n": 0}
        out["wall_s"] = round(self.wall_s, 3)
        out["server_cpu_pct"] = round(100 * self.server_cpu_s / self.wall_s, 1)
        out["client_cpu_pct"] = round(100 * self.client_cpu_s / self.wall_s, 1)
        other = max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s)
        out["other_processes_cpu_pct"] = round(100 * other / self.wall_s, 1)
        if self.samples:
            out["server_cpu_ms_per_call"] = round(1000 * self.server_cpu_s / len(self.samples), 3)
            out["client_cpu_ms_per_call"] = round(1000 * self.client_cpu_s / len(self.samples), 3)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class _Clocks:
    """The clocks a phase is measured with, read at one moment."""

    wall: float
    server_cpu: float
    client_cpu: float
    machine_cpu: float

    @classmethod
    def read(cls, server: ServerProcess) -> _Clocks:
        return cls(time.perf_counter(), cpu_seconds(server.pid), time.process_time(), machine_busy_seconds())


_restart_clocks: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "_restart_clocks", default=None
)


def _warmed_up() -> None:
    """Restart the clocks of the `measure` this runs under, if any: the CPU of warm-up calls
    must not be divided among the timed ones."""
    restart = _restart_clocks.get()
    if restart is not None:
        restart()


async def measure(
    server: ServerProcess, body: Callable[[], Awaitable[tuple[list[float], dict[str, Any]]]]
) -> Phase:
    """Run `body`, recording wall time and the server's and this process's CPU time (from the
    end of the warm-up when `body` runs a `timed_series`)."""
    start = _Clocks.read(server)

    def restart() -> None:
        nonlocal start
        start = _Clocks.read(server)

    token = _restart_clocks.set(restart)
    try:
        samples, extra = await body()
    finally:
        _restart_clocks.reset(token)
    end = _Clocks.read(server)
    return Phase(
        samples=samples,
        wall_s=end.wall - start.wall,
        server_cpu_s=end.server_cpu - start.server_cpu,
        client_cpu_s=end.client_cpu - start.client_cpu,
        machine_cpu_s=end.machine_cpu - start.machine_cpu,
        extra=extra,
    )


class RssSampler:
    """Samples a process's RSS every 20 ms on a thread while the `with` block runs.

    On entry, `idle` is the largest of 10 samples taken 20 ms apart (before the work starts);
    `peak` is the largest sample seen (at least `idle`), `growth` is `peak - idle`, and
    `samples` counts the samples the thread took (at least one).
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.idle = 0
        self.peak = 0
        self.samples = 0

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._rss())
            self.samples += 1
            if self._stop.wait(self._interval):
                return

    @property
    def growth(self) -> int:
        return self.peak - self.idle

    def __enter__(self) -> Self:
        for _ in range(10):
            self.idle = max(self.idle, self._rss())
            time.sleep(self._interval)
        self.peak = self.idle
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
