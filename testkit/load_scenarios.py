"""Load scenarios L-1, L-2, L-3, L-5 and L-6 (specs/test-catalogue.md ) and the trivial `echo` baseline.

Each scenario takes a `Target` (server URLs, agents spread round-robin), a concurrency, a
duration and a seed, seeds the files it needs through the tools, runs its agents, and returns
a JSON-serialisable dict: throughput and p50/p95/p99 per tool, outcomes by code, the CPU the
server, the generator and everything else used, and the successful writes the generator saw
next to the server's own `panaversityfs_write_total{status="success"}` delta. A scenario raises
`LoadError` (`SessionError` among them) when its sessions cannot be opened or its seed files
cannot be written; any other failure is counted in its result, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

import httpx

from testkit.loadgen import (
    SHED_CODES,
    TIMEOUT,
    AgentPool,
    LoadError,
    McpAgent,
    Outcome,
    Recorder,
    Target,
    agent_pool,
    is_transport_failure,
    latency_ms,
)
from testkit.measure import cpu_seconds, machine_busy_seconds

MIN_FILE_BYTES = 4 * 1024
MAX_FILE_BYTES = 50 * 1024
MAX_BACKOFF = 1.0
"""Longest an agent honours a `retry_after` before its next call (seconds)."""
CONFLICT_RETRIES = 3
"""Times a mixed-load agent re-reads and retries a write that met CONFLICT."""
HOT_BACKOFF_BASE = 0.02
HOT_BACKOFF_CAP = 1.0
"""L-3 losers wait a random time in [0, min(cap, base * 2**k)] after their k-th CONFLICT in a
row before re-reading (the agent contract's advice): without it all 16 agents re-race every
version, and the server spends its CPU on writes that can only lose."""
SEED_AGENTS = 8
SEED_RETRIES = 5
"""Times a seed write is retried after HASH_REQUIRED (the file exists) or a typed shed."""

_PARAGRAPH = (
    "Variables name values. In Python a name is bound with `=`, and the same name can be bound "
    "again later to a value of another type. Read each example, run it, then change it.\n\n"
)
_FILLER = _PARAGRAPH * (MAX_FILE_BYTES // len(_PARAGRAPH) + 1)

Step = Callable[[], Awaitable[None]]


# -- meters -------------------------------------------------------------------------------


class TokenBucket:
    """Paces callers to `rate` acquisitions per second, with bursts of at most `burst`."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self) -> None:
        """Wait for one token."""
        # Waiting while holding the lock queues the callers in order.
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


class CpuWindow:
    """CPU the server, this process and everything else use from now on (opened at construction)."""

    def __init__(self, server_pid: int | None) -> None:
        self._pid = server_pid
        self._server = cpu_seconds(server_pid) if server_pid else 0.0
        self._client = time.process_time()
        self._machine = machine_busy_seconds()
        self._wall = time.perf_counter()

    def usage(self) -> dict[str, float | None]:
        """CPU % of one core since the window opened: server (None if unknown), client, other processes."""
        wall = time.perf_counter() - self._wall
        server = cpu_seconds(self._pid) - self._server if self._pid else None
        client = time.process_time() - self._client
        other = max(0.0, machine_busy_seconds() - self._machine - client - (server or 0.0))
        return {
            "server_cpu_pct": round(100 * server / wall, 1) if server is not None else None,
            "client_cpu_pct": round(100 * client / wall, 1),
            "other_cpu_pct": round(100 * other / wall, 1),
        }


class ResourceSampler:
    """Samples a process's RSS, open FDs and TCP connections every `interval` seconds."""

    def __init__(self, pid: int | None, interval: float = 1.0, db_port: int | None = None) -> None:
        import psutil

        self._process = psutil.Process(pid) if pid else None
        self._interval = interval
        self._db_port = db_port
        self.samples: list[dict[str, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0

    def _sample(self) -> None:
        import psutil

        assert self._process is not None
        try:
            with self._process.oneshot():
                connections = self._process.net_connections(kind="tcp")
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self._started, 2),
                        "rss_mb": round(self._process.memory_info().rss / 2**20, 2),
                        "fds": self._process.num_fds(),
                        "tcp": len(connections),
                        "db_tcp": sum(1 for c in connections if c.raddr and c.raddr.port == self._db_port),
                    }
                )
        except psutil.Error:
            pass

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> Self:
        self._started = time.monotonic()
        if self._process is not None:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._sample()

    def growth(self, warmup_s: float) -> dict[str, Any]:
        """RSS and FD figures at the end of the warm-up and at the end, and the growth in between."""
        if not self.samples:
            return {"sampled": False}
        after = [s for s in self.samples if s["t"] >= warmup_s] or self.samples[-1:]
        start, end = after[0], after[-1]
        return {
            "sampled": True,
            "samples": len(self.samples),
            "warmup_s": warmup_s,
            "rss_mb_after_warmup": start["rss_mb"],
            "rss_mb_end": end["rss_mb"],
            "rss_mb_max": max(s["rss_mb"] for s in self.samples),
            "rss_growth_pct": round(100 * (end["rss_mb"] - start["rss_mb"]) / start["rss_mb"], 2),
            "fds_after_warmup": start["fds"],
            "fds_end": end["fds"],
            "fds_min_max": [min(s["fds"] for s in after), max(s["fds"] for s in after)],
            "db_tcp_max": max(s["db_tcp"] for s in self.samples),
            "tcp_max": max(s["tcp"] for s in self.samples),
            "series": self.samples,
        }


async def server_successful_writes(target: Target) -> int | None:
    """`panaversityfs_write_total{status="success"}` summed over the target's servers (None if unreadable)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        for base in target.base_urls():
            try:
                response = await http.get(f"{base}/metrics")
            except httpx.HTTPError:
                return None
            if response.status_code != 200:
                return None
            for line in response.text.splitlines():
                if line.startswith("panaversityfs_write_total{") and 'status="success"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return int(total)


# -- scenarios ----------------------------------------------------------------------------


def lesson_text(tag: str, size: int) -> str:
    """ASCII markdown of exactly `size` bytes (at least the heading) whose heading is `tag`."""
    head = f"# {tag}\n\n"
    return head + _FILLER[: max(0, size - len(head))]


def lesson_paths(count: int) -> list[str]:
    """`count` schema-valid lesson paths: 10 lessons per chapter, 5 chapters per part."""
    return [
        f"content/{i // 50 + 1:02d}-Part/{i // 10 % 5 + 1:02d}-Chapter/{i % 10 + 1:02d}-lesson.md"
        for i in range(count)
    ]


def agent_names(prefix: str, count: int) -> list[str]:
    """`prefix-01`, `prefix-02`, ... (the clientInfo names, hence the audit log's agent ids)."""
    return [f"{prefix}-{i + 1:02d}" for i in range(count)]


async def drive(steps: list[Step], duration: float) -> float:
    """Run each step in a loop until `duration` has passed; return the wall time until the last ended."""
    deadline = time.perf_counter() + duration

    async def loop(step: Step) -> None:
        while time.perf_counter() < deadline:
            await step()

    started = time.perf_counter()
    await asyncio.gather(*(loop(step) for step in steps))
    return time.perf_counter() - started


async def backoff(outcome: Outcome) -> None:
    """Honour the `retry_after` of a shed call (capped at MAX_BACKOFF)."""
    if outcome.status in SHED_CODES and outcome.retry_after:
        await asyncio.sleep(min(outcome.retry_after, MAX_BACKOFF))


async def seed_files(
    target: Target, files: list[tuple[str, str]], seed: int, name: str
) -> tuple[dict[tuple[str, str], str], dict[str, Any]]:
    """Write every (book, path) with 4-50 KB of text; return their hashes and the seeding summary.

    A file that already exists is replaced (with its current hash), so seeding is repeatable;
    a write the server sheds is retried after its `retry_after`.

    Raises:
        LoadError: some file could not be written.
    """
    recorder = Recorder()
    hashes: dict[tuple[str, str], str] = {}
    pending = iter(files)
    rng = random.Random(f"{seed}:{name}:seed")
    sizes = {key: rng.randint(MIN_FILE_BYTES, MAX_FILE_BYTES) for key in files}

    async def writer(agent: McpAgent) -> None:
        for book, path in pending:
            arguments = {
                "book_id": book,
                "path": path,
                "content": lesson_text(f"{path} v0", sizes[book, path]),
            }
            outcome = await agent.call_tool("write_content", arguments)
            for _ in range(SEED_RETRIES):
                if outcome.status == "HASH_REQUIRED" and outcome.error:
                    arguments["expected_hash"] = outcome.error["current_hash"]
                elif outcome.status in SHED_CODES:
                    await asyncio.sleep(min(outcome.retry_after or MAX_BACKOFF, MAX_BACKOFF))
                else:
                    break
                outcome = await agent.call_tool("write_content", arguments)
            if outcome.ok and outcome.result:
                hashes[book, path] = outcome.result["file_hash"]

    started = time.perf_counter()
    async with agent_pool(target, agent_names(f"{name}-seeder", SEED_AGENTS), recorder) as pool:
        await asyncio.gather(*(writer(agent) for agent in pool.agents))
    summary = recorder.summary(time.perf_counter() - started)
    if len(hashes) != len(files):
        raise LoadError(
            f"seeding {name}: {len(hashes)}/{len(files)} files written: {summary['errors_by_code']}"
        )
    return hashes, {"files": len(files), "writes_ok": recorder.count("write_content"), **summary}


class MixedAgent:
    """An L-2 agent: reads and writes random files, chaining `expected_hash` from what it last saw."""

    def __init__(
        self,
        agent: McpAgent,
        files: list[tuple[str, str]],
        rng: random.Random,
        read_share: float,
        pacer: TokenBucket | None = None,
    ) -> None:
        self.agent = agent
        self.files = files
        self.rng = rng
        self.read_share = read_share
        self.pacer = pacer
        self.hashes: dict[tuple[str, str], str] = {}
        self.writes = 0

    async def _call(self, tool: str, arguments: dict[str, Any]) -> Outcome:
        if self.pacer is not None:
            await self.pacer.take()
        outcome = await self.agent.call_tool(tool, arguments)
        await backoff(outcome)
        return outcome

    async def read(self, book: str, path: str) -> str | None:
        """Read one file; return (and remember) its hash, or None if the read failed."""
        outcome = await self._call("read_content", {"book_id": book, "path": path})
        if not outcome.ok or not outcome.result:
            return None
        self.hashes[book, path] = outcome.result["file_hash"]
        return self.hashes[book, path]

    async def write(self, book: str, path: str) -> None:
        """Replace one file with the hash last seen; on CONFLICT re-read and retry."""
        for _ in range(1 + CONFLICT_RETRIES):
            expected = self.hashes.get((book, path)) or await self.read(book, path)
            if expected is None:
                return
            self.writes += 1
            tag = f"{self.agent.agent_id} write {self.writes}"
            size = self.rng.randint(MIN_FILE_BYTES, MAX_FILE_BYTES)
            outcome = await self._call(
                "write_content",
                {"book_id": book, "path": path, "content": lesson_text(tag, size), "expected_hash": expected},
            )
            if outcome.ok and outcome.result:
                self.hashes[book, path] = outcome.result["file_hash"]
                return
            self.hashes.pop((book, path), None)
            if outcome.status != "CONFLICT":
                return

    async def step(self) -> None:
        """One read (read_share of the time) or one write, of a random file."""
        book, path = self.rng.choice(self.files)
        if self.rng.random() < self.read_share:
            await self.read(book, path)
        else:
            await self.write(book, path)


def mixed_files(prefix: str, books: int, files_per_book: int) -> list[tuple[str, str]]:
    """`books` × `files_per_book` (book, path) pairs: books `prefix-1`, `prefix-2`, ..."""
    return [(f"{prefix}-{b + 1}", path) for b in range(books) for path in lesson_paths(files_per_book)]


def _result(
    scenario: str, recorder: Recorder, wall: float, cpu: dict[str, Any], pool: AgentPool, **extra: Any
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "sessions": len(pool.agents),
        "session_failures": len(pool.failures),
        **recorder.summary(wall),
        "cpu": cpu,
        **extra,
    }


async def _writes_check(target: Target, before: int | None, generator_writes: int) -> dict[str, Any]:
    after = await server_successful_writes(target)
    delta = None if before is None or after is None else after - before
    return {
        "successful_writes": generator_writes,
        "server_successful_writes_delta": delta,
        "writes_match_server": None if delta is None else delta == generator_writes,
    }


async def read_smoke(
    target: Target, *, concurrency: int = 8, duration: float = 30.0, seed: int = 0, files: int = 100
) -> dict[str, Any]:
    """L-1: seed `files` files of 4-50 KB, then `concurrency` agents `read_content` random ones."""
    before = await server_successful_writes(target)
    keys = [("load-read", path) for path in lesson_paths(files)]
    _, seeded = await seed_files(target, keys, seed, "l1")
    recorder = Recorder()
    async with agent_pool(target, agent_names("l1-reader", concurrency), recorder) as pool:

        def reader(agent: McpAgent, rng: random.Random) -> Step:
            async def step() -> None:
                book, path = rng.choice(keys)
                await backoff(await agent.call_tool("read_content", {"book_id": book, "path": path}))

            return step

        steps = [reader(a, random.Random(f"{seed}:l1:{i}")) for i, a in enumerate(pool.agents)]
        cpu = CpuWindow(target.server_pid)
        wall = await drive(steps, duration)
        usage = cpu.usage()
    checks = await _writes_check(target, before, seeded["writes_ok"])
    return _result(
        "L-1", recorder, wall, usage, pool, concurrency=concurrency, duration_s=duration, seed=seed,
        seed_files=seeded, errors=sum(recorder.outcomes().values()) - recorder.count("read_content"), **checks,
    )  # fmt: skip


async def mixed(
    target: Target,
    *,
    concurrency: int = 8,
    duration: float = 120.0,
    seed: int = 0,
    books: int = 3,
    files_per_book: int = 200,
    read_share: float = 0.8,
    rate: float | None = None,
    warmup: float | None = None,
    scenario: str = "L-2",
) -> dict[str, Any]:
    """L-2 (or, with `rate` calls/s and a `warmup`, the L-5 soak): 80/20 reads/writes over 3 × 200 files.

    CONFLICT is expected under contention and counted apart; every other error code and
    every transport failure counts in `errors`. With `rate`, the server's RSS, FDs and TCP
    connections are sampled every second and their growth after `warmup` reported.
    """
    name = scenario.lower().replace("-", "")
    before = await server_successful_writes(target)
    files = mixed_files(f"load-{name}", books, files_per_book)
    _, seeded = await seed_files(target, files, seed, name)
    recorder = Recorder()
    pacer = TokenBucket(rate) if rate else None
    sampler = ResourceSampler(target.server_pid if rate else None, db_port=target.db_port)
    async with agent_pool(target, agent_names(f"{name}-agent", concurrency), recorder) as pool:
        agents = [
            MixedAgent(a, files, random.Random(f"{seed}:{name}:{i}"), read_share, pacer)
            for i, a in enumerate(pool.agents)
        ]
        cpu = CpuWindow(target.server_pid)
        async with sampler:
            wall = await drive([a.step for a in agents], duration)
        usage = cpu.usage()
    outcomes = recorder.outcomes()
    errors = {k: v for k, v in outcomes.items() if k not in ("ok", "CONFLICT")}
    calls = sum(outcomes.values())
    writes_ok = recorder.count("write_content")
    checks = await _writes_check(target, before, seeded["writes_ok"] + writes_ok)
    extra: dict[str, Any] = {}
    if rate:
        extra = {
            "rate_calls_per_s": rate,
            "resources": sampler.growth(warmup if warmup is not None else duration / 4),
            "error_rate": round(sum(errors.values()) / calls, 5) if calls else None,
        }
    return _result(
        scenario, recorder, wall, usage, pool, concurrency=concurrency, duration_s=duration, seed=seed,
        files=len(files), seed_files=seeded, writes_per_s=round(writes_ok / wall, 1),
        reads_per_s=round(recorder.count("read_content") / wall, 1), conflicts=outcomes["CONFLICT"],
        errors=sum(errors.values()), error_codes=errors, **extra, **checks,
    )  # fmt: skip


async def soak(
    target: Target,
    *,
    concurrency: int = 8,
    duration: float = 300.0,
    seed: int = 0,
    rate: float = 20.0,
    warmup: float | None = None,
    files_per_book: int = 200,
) -> dict[str, Any]:
    """L-5: the L-2 mix paced to `rate` calls/s, sampling the server's RSS and FDs every second."""
    return await mixed(
        target, concurrency=concurrency, duration=duration, seed=seed, files_per_book=files_per_book,
        rate=rate, warmup=min(300.0, duration / 4) if warmup is None else warmup, scenario="L-5",
    )  # fmt: skip


HOT_BOOK = "load-hot"
HOT_PATH = "content/01-Hot/01-Key/01-lesson.md"


async def hot_key(
    target: Target, *, concurrency: int = 16, duration: float = 30.0, seed: int = 0
) -> dict[str, Any]:
    """L-3: `concurrency` agents read ONE file and write it with the hash they read.

    Every losing write must be exactly CONFLICT (never another code, never a 5xx), and the
    file's version must advance by exactly the number of successful writes.
    """
    before = await server_successful_writes(target)
    _, seeded = await seed_files(target, [(HOT_BOOK, HOT_PATH)], seed, "l3")
    measured = Recorder()

    async def version(probe: McpAgent) -> int:
        read = await probe.call_tool("read_content", {"book_id": HOT_BOOK, "path": HOT_PATH})
        return int(read.result["version"]) if read.ok and read.result else -1

    def racer(agent: McpAgent, rng: random.Random) -> Step:
        losses = 0

        async def step() -> None:
            nonlocal losses
            read = await agent.call_tool("read_content", {"book_id": HOT_BOOK, "path": HOT_PATH})
            if not read.ok or not read.result:
                await backoff(read)
                return
            content = lesson_text(f"{agent.agent_id} {rng.random()}", rng.randint(MIN_FILE_BYTES, 8192))
            arguments = {"book_id": HOT_BOOK, "path": HOT_PATH, "content": content}
            written = await agent.call_tool(
                "write_content", arguments | {"expected_hash": read.result["file_hash"]}
            )
            if written.status == "CONFLICT":
                losses += 1
                await asyncio.sleep(rng.uniform(0, min(HOT_BACKOFF_CAP, HOT_BACKOFF_BASE * 2**losses)))
                return
            losses = 0
            await backoff(written)

        return step

    async with agent_pool(target, ["l3-probe"], None) as probes:
        first_version = await version(probes.agents[0])
        async with agent_pool(target, agent_names("l3-agent", concurrency), measured) as pool:
            steps = [racer(a, random.Random(f"{seed}:l3:{i}")) for i, a in enumerate(pool.agents)]
            cpu = CpuWindow(target.server_pid)
            wall = await drive(steps, duration)
            usage = cpu.usage()
        advance = await version(probes.agents[0]) - first_version
    writes = measured.statuses["write_content"]
    successes = writes["ok"]
    losers = {k: v for k, v in writes.items() if k != "ok"}
    wrong = {k: v for k, v in losers.items() if k != "CONFLICT"}
    read_failures = {k: v for k, v in measured.statuses["read_content"].items() if k != "ok"}
    server_errors = sum(v for k, v in measured.outcomes().items() if k.startswith("HTTP_5"))
    checks = await _writes_check(target, before, seeded["writes_ok"] + successes)
    return _result(
        "L-3", measured, wall, usage, pool, concurrency=concurrency, duration_s=duration, seed=seed,
        successes=successes, successes_per_s=round(successes / wall, 1), conflicts=losers.get("CONFLICT", 0),
        losers_not_conflict=wrong, read_failures=read_failures, http_5xx=server_errors,
        all_losers_conflict=not wrong, version_advance=advance, version_advance_matches=advance == successes,
        **checks,
    )  # fmt: skip


def concurrency_ramp(limit: int) -> Iterator[int]:
    """1, 2, 4, ... below `limit`, then `limit`."""
    c = 1
    while c < limit:
        yield c
        c *= 2
    yield limit


def _step_summary(
    concurrency: int, recorder: Recorder, wall: float, cpu: dict[str, Any], pool: AgentPool
) -> dict[str, Any]:
    outcomes = recorder.outcomes()
    samples = [s for tool in recorder.latencies.values() for s in tool]
    ok_samples = [s for tool in recorder.ok_latencies.values() for s in tool]
    sheds = {k: v for k, v in outcomes.items() if k in SHED_CODES}
    other = {
        k: v for k, v in outcomes.items() if k not in SHED_CODES and k not in ("ok", "CONFLICT", TIMEOUT)
    }
    return {
        "concurrency": concurrency,
        "sessions": len(pool.agents),
        "session_failures": len(pool.failures),
        "calls": len(samples),
        "calls_per_s": round(len(samples) / wall, 1),
        "ok_per_s": round(outcomes["ok"] / wall, 1),
        **latency_ms(samples),
        "ok_p99_ms": latency_ms(ok_samples)["p99_ms"],
        "timeouts": outcomes[TIMEOUT],
        "typed_sheds": sum(sheds.values()),
        "sheds_with_retry_after": sum(recorder.retry_after_given[k] for k in sheds),
        "shed_codes": sheds,
        "conflicts": outcomes["CONFLICT"],
        "other_errors": other,
        "transport_failures": sum(v for k, v in outcomes.items() if is_transport_failure(k)),
        "cpu": cpu,
    }


async def saturation(
    target: Target,
    *,
    max_concurrency: int = 64,
    step_seconds: float = 5.0,
    cooldown_seconds: float = 10.0,
    call_deadline: float = 10.0,
    seed: int = 0,
    files_per_book: int = 200,
) -> dict[str, Any]:
    """L-6: the L-2 mix at c = 1, 2, 4, ... `max_concurrency`, then a cool-down at c=1.

    Per step: throughput, latency, timeouts (no answer within `call_deadline`) against typed
    sheds (`RATE_LIMITED`/`UNAVAILABLE`, HTTP 429/503) and other errors. Sessions that cannot
    be opened are counted, not fatal. Every step uses new agent ids, so one step's per-agent
    rate-limit buckets do not carry into the next; within a long step they can (RATE_LIMITED).
    """
    files = mixed_files("load-l6", 3, files_per_book)
    _, seeded = await seed_files(target, files, seed, "l6")
    steps: list[dict[str, Any]] = []

    async def run_step(concurrency: int, seconds: float, label: str) -> dict[str, Any]:
        recorder = Recorder()
        names = agent_names(f"l6-{label}", concurrency)
        async with agent_pool(
            target, names, recorder, call_deadline=call_deadline, require_all=False
        ) as pool:
            agents = [
                MixedAgent(a, files, random.Random(f"{seed}:l6:{label}:{i}"), 0.8)
                for i, a in enumerate(pool.agents)
            ]
            cpu = CpuWindow(target.server_pid)
            wall = await drive([a.step for a in agents], seconds) if agents else seconds
            return _step_summary(concurrency, recorder, wall, cpu.usage(), pool)

    for concurrency in concurrency_ramp(max_concurrency):
        steps.append(await run_step(concurrency, step_seconds, f"c{concurrency}"))
    cooldown = await run_step(1, cooldown_seconds, "cooldown")
    first_p99 = steps[0]["p99_ms"]
    return {
        "scenario": "L-6",
        "max_concurrency": max_concurrency,
        "step_seconds": step_seconds,
        "call_deadline_s": call_deadline,
        "seed": seed,
        "seed_files": seeded,
        "steps": steps,
        "cooldown": cooldown,
        "cooldown_p99_over_c1_p99": round(cooldown["p99_ms"] / first_p99, 2)
        if cooldown["p99_ms"] and first_p99
        else None,
        "timeouts": sum(s["timeouts"] for s in steps),
        "typed_sheds": sum(s["typed_sheds"] for s in steps),
    }


async def echo_baseline(target: Target, *, concurrency: int = 8, duration: float = 30.0) -> dict[str, Any]:
    """The same generator against the trivial server's `echo` tool (the same-run baseline for L-1)."""
    recorder = Recorder()
    async with agent_pool(target, agent_names("echo-agent", concurrency), recorder) as pool:

        def caller(agent: McpAgent) -> Step:
            async def step() -> None:
                await agent.call_tool("echo", {"text": "ping"})

            return step

        cpu = CpuWindow(target.server_pid)
        wall = await drive([caller(a) for a in pool.agents], duration)
        usage = cpu.usage()
    return _result("baseline", recorder, wall, usage, pool, concurrency=concurrency, duration_s=duration)
