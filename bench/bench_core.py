"""Core benchmark: tool-call latency and write throughput of real `panaversity-fs serve` processes.

    uv run python -m bench.bench_core            # full run (3 rounds; N=300 per latency series, 10 s load)
    uv run python -m bench.bench_core --quick    # short run (1 round; N=60, 3 s load)

Starts, together, each as its own subprocess on a free loopback port:

1. `bench/trivial_server.py`: a FastMCP server whose tools touch nothing (the baselines):
   `echo` of a short text, `give` (answers a lesson's size of text: what a read is compared
   with), `take` (accepts a lesson: what a write is compared with, also from 8 clients);
2. `panaversity-fs serve` on SQLite + a temporary fs storage folder;
3. `panaversity-fs serve` on a scratch PostgreSQL database (`pfs_bench_<pid>`, created on
   `PFS_BENCH_PG_URL`, default postgresql://postgres@127.0.0.1:5432/postgres, dropped
   afterwards) + a temporary fs storage folder;
4. no server: plain asyncpg on that scratch database, an `UPDATE ... RETURNING` and an `INSERT`
   in one transaction (the least database work of a write), sequentially on one connection
   and from 8 connections: the same-run baseline of the PostgreSQL write series.

The servers run in rounds (`--rounds`; 3 by default, 1 with `--quick`): each round starts
fresh servers on fresh databases and measures every series, and each reported figure is the
median of its rounds (the rounds themselves are kept in the JSON). On a noisy machine one busy
minute then moves one round of every series, not the whole of one series: a ratio against a
baseline measured minutes earlier would move with it.

Every latency series uses one connected fastmcp `Client` over streamable HTTP and sequential
calls: 30 warm-up calls, then N timed calls, `time.perf_counter` around each call; the timed
calls of all the series are interleaved in `--blocks` blocks (`bench.interleave`), so that a
ratio compares calls made in the same seconds. Throughput then uses 8 clients (8 MCP
sessions), each updating its own lesson with chained hashes, one server at a time.
Results: a table on stdout, the core table of docs/benchmarks.md (`report.core_section`), and
bench/results/core-<timestamp>.json (or `--json PATH`). `--profile pyspy` also records a py-spy
profile of the server during each phase (needs `py-spy` on PATH: `uv run --with py-spy python
-m bench.bench_core --profile pyspy`; `pyspy-gil` keeps only the GIL holder's samples);
`--profile cprofile` runs every server (the trivial one too, so a phase can be compared with its
baseline function by function) under cProfile with the main thread's CPU clock, one .prof file
per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mcp_types
from fastmcp import Client

from bench.bench_raw import bench_raw_txn
from bench.interleave import Prepare, Series, block_sizes, interleaved
from bench.profiling import Profiler
from bench.report import core_section
from testkit.databases import create_pg_database, drop_pg_database
from testkit.measure import (
    machine_info,
    measure,
    wait_quiet,
)
from testkit.processes import ServerProcess, free_port, server_env

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

BOOK = "bench-book"
READ_LESSON = "content/01-Bench/01-Reads/01-lesson.md"
WRITE_LESSON = "content/01-Bench/02-Writes/01-lesson.md"
LOAD_LESSON = "content/02-Load/01-Writers/{:02d}-writer.md"
OVERLAY_USER = "reader-1"
LESSON_BYTES = 5 * 1024
WARMUP = 30
LOAD_CLIENTS = 8

TARGETS = {
    "read_over_trivial": ("<=", 1.3),
    "write_over_trivial": ("<=", 2.0),
    "read_cpu_over_trivial_ms": ("<=", 1.0),
    "write_cpu_over_trivial_ms": ("<=", 2.5),
    "overlay_minus_base_ms": ("<=", 1.0),
    "writes_per_s_8_clients": (">=", 250.0),
    "sqlite_writes_per_s_8_clients": (">=", 150.0),
}


# -- helpers -------------------------------------------------------------------------------


def lesson_text(tag: str) -> str:
    """About 5 KB of lesson markdown whose first line is `tag` (so each version differs)."""
    head = f"# Lesson {tag}\n\n"
    paragraph = (
        "Variables name values. In Python a name is bound with `=`, and the same name can be "
        "bound again later to a value of another type. Read each example, run it, then change it.\n\n"
    )
    body = head
    while len(body.encode()) + len(paragraph) <= LESSON_BYTES:
        body += paragraph
    return body + "x" * (LESSON_BYTES - len(body.encode()))


# -- server processes ----------------------------------------------------------------------


"""Runs `panaversity-fs` under cProfile with the main thread's CPU clock; SIGUSR1 dumps and resets."""


# -- client-side measurements --------------------------------------------------------------


def make_client(url: str) -> Client[Any]:
    """One MCP client over streamable HTTP, introducing itself as `bench-agent`."""
    return Client(
        f"{url}/mcp",
        client_info=mcp_types.Implementation(name="bench-agent", version="1"),
        timeout=60,
    )


async def call(client: Client[Any], tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call `tool`; return its structured result or raise RuntimeError with the error text."""
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    if result.is_error:
        text = getattr(result.content[0], "text", repr(result.content)) if result.content else "?"
        raise RuntimeError(f"{tool} failed: {text}")
    assert result.structured_content is not None
    return dict(result.structured_content)


def trivial_series(server: ServerProcess, client: Client[Any]) -> dict[str, Series]:
    """The trivial tools' latency series on `client`: `echo` of a short text, `give` of a
    lesson's size, `take` of a lesson."""
    lesson = lesson_text("baseline")
    calls: dict[str, Callable[[int], dict[str, Any]]] = {
        "echo": lambda i: {"text": f"ping {i}"},
        "give": lambda _i: {"size": LESSON_BYTES},
        "take": lambda i: {"text": f"{i}{lesson}"},
    }

    def prepare(tool: str, arguments: Callable[[int], dict[str, Any]]) -> Prepare:
        def one(i: int) -> Callable[[], Awaitable[Any]]:
            args = arguments(i)
            return lambda: call(client, tool, args)

        return one

    return {tool: Series(server, prepare(tool, arguments)) for tool, arguments in calls.items()}


async def bench_trivial(server: ServerProcess, n: int, warmup: int = WARMUP) -> dict[str, Any]:
    """Latency of the trivial tools alone (`trivial_series`: `warmup` calls, then `n` timed, one
    series after another)."""
    async with make_client(server.url) as client:
        return await interleaved(trivial_series(server, client), warmup, n, blocks=1)


async def for_seconds(
    seconds: float, client: Callable[[int, float], Awaitable[None]], counts: list[int], noun: str
) -> dict[str, Any]:
    """Run `client(k, deadline)` for each of the `LOAD_CLIENTS` clients until `seconds` pass
    (each counting its calls in `counts[k]`); return the wall time, the count and the rate."""
    started = time.perf_counter()
    await asyncio.gather(*(client(k, started + seconds) for k in range(LOAD_CLIENTS)))
    wall = time.perf_counter() - started
    return {
        "clients": LOAD_CLIENTS,
        "duration_s": round(wall, 3),
        noun: sum(counts),
        f"{noun}_per_s": round(sum(counts) / wall, 1),
    }


async def take_throughput(server: ServerProcess, seconds: float, lesson: str) -> dict[str, Any]:
    """8 connected clients calling `take` with a lesson in a loop for `seconds`: the ceiling the
    8-client write series is compared with."""
    clients = [make_client(server.url) for _ in range(LOAD_CLIENTS)]
    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        latencies: list[float] = []
        counts = [0] * LOAD_CLIENTS

        async def caller(k: int, deadline: float) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await call(clients[k], "take", {"text": f"{k}-{counts[k]}{lesson}"})
                latencies.append(time.perf_counter() - started)
                counts[k] += 1

        async def body() -> tuple[list[float], dict[str, Any]]:
            return latencies, await for_seconds(seconds, caller, counts, "calls")

        phase = await measure(server, body)
    return phase.as_dict()


async def pfs_series(server: ServerProcess, client: Client[Any]) -> dict[str, Series]:
    """A PanaversityFS server's latency series on `client`, their files made first: reads of a
    base lesson and of a user's overlay of it, and chained updates of another lesson."""
    base = await call(
        client, "write_content", {"book_id": BOOK, "path": READ_LESSON, "content": lesson_text("base")}
    )
    overlay = await call(
        client,
        "write_content",
        {
            "book_id": BOOK,
            "path": READ_LESSON,
            "content": lesson_text("overlay of reader-1"),
            "expected_hash": base["file_hash"],
            "user_id": OVERLAY_USER,
        },
    )
    assert overlay["source"] == "overlay", overlay
    # Check once that the overlay read really returns the overlay.
    seen = await call(client, "read_content", {"book_id": BOOK, "path": READ_LESSON, "user_id": OVERLAY_USER})
    assert seen["source"] == "overlay" and seen["file_hash"] == overlay["file_hash"], seen
    created = await call(
        client, "write_content", {"book_id": BOOK, "path": WRITE_LESSON, "content": lesson_text("v0")}
    )
    chain = {"hash": created["file_hash"]}

    def read(user_id: str | None) -> Prepare:
        args = {"book_id": BOOK, "path": READ_LESSON} | ({"user_id": user_id} if user_id else {})
        return lambda _i: lambda: call(client, "read_content", args)

    def write(i: int) -> Callable[[], Awaitable[Any]]:
        args = {"book_id": BOOK, "path": WRITE_LESSON, "content": lesson_text(f"v{i + 1}")}

        async def op() -> None:
            outcome = await call(client, "write_content", args | {"expected_hash": chain["hash"]})
            chain["hash"] = outcome["file_hash"]

        return op

    return {
        "read_base": Series(server, read(None)),
        "read_overlay": Series(server, read(OVERLAY_USER)),
        "write": Series(server, write),
    }


async def write_throughput(server: ServerProcess, seconds: float) -> dict[str, Any]:
    """8 connected clients, each updating its own lesson in a loop for `seconds`."""
    clients = [make_client(server.url) for _ in range(LOAD_CLIENTS)]
    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        hashes: list[str] = []
        for k, c in enumerate(clients):
            path = LOAD_LESSON.format(k + 1)
            created = await call(
                c, "write_content", {"book_id": BOOK, "path": path, "content": lesson_text("w0")}
            )
            hashes.append(created["file_hash"])
        # A short warm-up round so every session and pooled connection is hot.
        for k, c in enumerate(clients):
            path = LOAD_LESSON.format(k + 1)
            done = await call(
                c,
                "write_content",
                {"book_id": BOOK, "path": path, "content": lesson_text("w1"), "expected_hash": hashes[k]},
            )
            hashes[k] = done["file_hash"]

        latencies: list[float] = []
        errors: list[str] = []
        counts = [0] * LOAD_CLIENTS

        async def writer(k: int, deadline: float) -> None:
            c = clients[k]
            path = LOAD_LESSON.format(k + 1)
            i = 2
            while time.perf_counter() < deadline:
                args = {
                    "book_id": BOOK,
                    "path": path,
                    "content": lesson_text(f"w{i}-{k}"),
                    "expected_hash": hashes[k],
                }
                i += 1
                started = time.perf_counter()
                try:
                    outcome = await call(c, "write_content", args)
                except Exception as exc:
                    errors.append(str(exc)[:300])
                    current = await call(c, "read_content", {"book_id": BOOK, "path": path})
                    hashes[k] = current["file_hash"]
                    continue
                latencies.append(time.perf_counter() - started)
                hashes[k] = outcome["file_hash"]
                counts[k] += 1

        async def body() -> tuple[list[float], dict[str, Any]]:
            rate = await for_seconds(seconds, writer, counts, "writes")
            return latencies, rate | {
                "per_client": counts,
                "errors": len(errors),
                "error_samples": sorted(set(errors))[:5],
            }

        phase = await measure(server, body)
    return phase.as_dict()


# -- the run -------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_run(
    prefix: str, pg_names: Sequence[str]
) -> Iterator[tuple[Path, list[str], list[ServerProcess]]]:
    """A scratch folder, the PostgreSQL databases `pg_names` created (their URLs) and the list a
    run adds its servers to; afterwards the servers are stopped, the databases dropped and the
    folder removed, however the run ended."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    servers: list[ServerProcess] = []
    urls: list[str] = []
    try:
        for name in pg_names:
            urls.append(asyncio.run(create_pg_database(name)))
        yield tmp, urls, servers
    finally:
        for server in servers:
            server.stop()
        for name in pg_names[: len(urls)]:
            try:
                asyncio.run(drop_pg_database(name))
            except Exception as exc:
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def launch(
    name: str, argv: list[str], env: dict[str, str], tmp: Path, servers: list[ServerProcess]
) -> ServerProcess:
    """Start `argv --port <free port>` as server `name` (log in `tmp`), added to `servers` first
    (so the caller stops it even if it never becomes healthy); return it once healthy."""
    port = free_port()
    server = ServerProcess.command(name, [*argv, "--port", str(port)], env, tmp / f"{name}.log", port)
    servers.append(server)
    server.start()
    return server


def launch_trivial(
    tmp: Path, servers: list[ServerProcess], profiler: Profiler | None = None
) -> ServerProcess:
    """Start `bench/trivial_server.py` (the baselines) with `launch` (under cProfile when
    `profiler` says so); return it once healthy."""
    argv = [sys.executable, "-m", "bench.trivial_server"]
    if profiler is not None:
        argv = profiler.wrap([], module="bench.trivial_server")
    return launch("trivial", argv, dict(os.environ), tmp, servers)


def baseline_names(trivial: dict[str, Any]) -> tuple[str, str]:
    """The trivial tools a read and a write are compared with: `give` and `take` (runs made
    before they existed compared both with the short `echo`)."""
    return ("give" if "give" in trivial else "echo", "take" if "take" in trivial else "echo")


def baselines(trivial: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The series of `baseline_names`."""
    read, write = baseline_names(trivial)
    return trivial[read], trivial[write]


def ratios(trivial: dict[str, Any], backend: dict[str, Any], digits: int | None = 3) -> dict[str, float]:
    """The headline numbers of one backend against the same run's trivial series (rounded to
    `digits` decimals; None: unrounded)."""

    def rounded(value: float) -> float:
        return value if digits is None else round(value, digits)

    give, take = baselines(trivial)
    return {
        "read_over_trivial": rounded(backend["read_base"]["p50_ms"] / give["p50_ms"]),
        "write_over_trivial": rounded(backend["write"]["p50_ms"] / take["p50_ms"]),
        "read_cpu_over_trivial_ms": rounded(
            backend["read_base"]["server_cpu_ms_per_call"] - give["server_cpu_ms_per_call"]
        ),
        "write_cpu_over_trivial_ms": rounded(
            backend["write"]["server_cpu_ms_per_call"] - take["server_cpu_ms_per_call"]
        ),
        "overlay_minus_base_ms": rounded(backend["read_overlay"]["p50_ms"] - backend["read_base"]["p50_ms"]),
        "writes_per_s_8_clients": backend["throughput"]["writes_per_s"],
    }


def target_key(backend: str, metric: str) -> str:
    """The `TARGETS` entry that judges `metric` on `backend` (8-client writes differ by database)."""
    if backend == "sqlite" and metric == "writes_per_s_8_clients":
        return "sqlite_writes_per_s_8_clients"
    return metric


def meets(metric: str, value: float) -> bool:
    """Whether `value` meets the target of `metric`."""
    op, target = TARGETS[metric]
    return value <= target if op == "<=" else value >= target


def _console_row(title: str, s: dict[str, Any], note: str = "") -> str:
    """One series as a row of the console table (`note` appended)."""
    return (
        f"{title:<34}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
        f"{s['server_cpu_ms_per_call']:>17.2f}{s['client_cpu_ms_per_call']:>17.2f}"
        f"{s['other_processes_cpu_pct']:>13.1f}{note}"
    )


def report(results: dict[str, Any]) -> str:
    """The human table, the markdown table of docs/benchmarks.md, and the targets."""
    lines: list[str] = []
    names = {"sqlite": "SQLite + fs", "postgres": "PostgreSQL + fs"}
    lines.append("")
    lines.append(
        f"{'series':<34}{'p50 ms':>9}{'p95 ms':>9}{'srv CPU ms/call':>17}{'cli CPU ms/call':>17}"
        f"{'other CPU %':>13}"
    )
    for tool in ("echo", "give", "take"):
        if s := results["trivial"].get(tool):
            lines.append(_console_row(f"trivial {tool}", s))
    if t := results["trivial"].get("take_throughput"):
        lines.append(_console_row("trivial take, 8 clients", t, f"   {t['calls_per_s']} calls/s"))
    for key, label in names.items():
        backend = results.get(key)
        if backend is None:
            continue
        for series, title in (("read_base", "read"), ("read_overlay", "overlay read"), ("write", "write")):
            lines.append(_console_row(f"{label} {title}", backend[series]))
        t = backend["throughput"]
        note = (
            f"   {t['writes_per_s']} writes/s, {t['errors']} errors, server CPU {t['server_cpu_pct']}%,"
            f" client CPU {t['client_cpu_pct']}%"
        )
        lines.append(_console_row(f"{label} 8-client writes", t, note))
    if raw := results.get("postgres_raw_txn"):
        for series, title in (("sequential", "raw asyncpg txn"), ("throughput", "raw asyncpg txn, 8 conns")):
            s = raw[series]
            rate = f"   {s['txns_per_s']} txns/s" if series == "throughput" else ""
            lines.append(
                f"{title:<34}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}{'':>17}{s['client_cpu_ms_per_call']:>17.2f}"
                f"{s['other_processes_cpu_pct']:>13.1f}{rate}"
            )
    lines.append("")
    lines.append("The core table of docs/benchmarks.md (bench/report.py renders it there from the JSON):")
    lines.append("")
    lines += core_section(results)
    lines.append("")
    present = [k for k in names if k in results]
    lines.append("| metric | target | " + " | ".join(names[k] for k in present) + " |")
    lines.append("|---|---|" + "---|" * len(present))
    labels = {
        "read_over_trivial": "read p50 / trivial give p50",
        "write_over_trivial": "write p50 / trivial take p50",
        "read_cpu_over_trivial_ms": "read − give, server CPU ms/call",
        "write_cpu_over_trivial_ms": "write − take, server CPU ms/call",
        "overlay_minus_base_ms": "overlay p50 − base read p50 (ms)",
        "writes_per_s_8_clients": "writes/s, 8 clients",
    }
    for metric, label in labels.items():
        cells = []
        goals: list[str] = []
        for k in present:
            key = target_key(k, metric)
            op, target = TARGETS[key]
            goals.append(f"{op.replace('<=', '≤').replace('>=', '≥')} {target:g}")
            value = results["ratios"][k][metric]
            cells.append(f"{value:g} {'met' if meets(key, value) else '**missed**'}")
        lines.append(f"| {label} | {' / '.join(dict.fromkeys(goals))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(
    args: argparse.Namespace, tmp: Path, pg_urls: list[str], servers: list[ServerProcess]
) -> dict[str, Any]:
    """Start each server in turn and measure it (SIGTERM cancels the run cleanly)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(args, tmp, pg_urls, servers)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


async def _run(
    args: argparse.Namespace, tmp: Path, pg_urls: list[str], servers: list[ServerProcess]
) -> dict[str, Any]:
    n = 60 if args.quick else 300
    load_seconds = 3.0 if args.quick else 10.0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    profile_dir = RESULTS / f"profile-{stamp}" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(args.profile, profile_dir)
    results: dict[str, Any] = {
        "benchmark": "core",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python -m bench.bench_core", *sys.argv[1:]]),
        "machine": machine_info(),
        "config": {
            "n": n,
            "warmup": WARMUP,
            "load_clients": LOAD_CLIENTS,
            "load_seconds": load_seconds,
            "lesson_bytes": LESSON_BYTES,
            "server_log_level": args.log_level,
            "background_cpu_pct_before": args.background_cpu_pct,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "transport": "streamable HTTP, stateful, fastmcp Client mode=auto",
            "rounds": args.rounds,
            "blocks": 1 if args.profile else args.blocks,
        },
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
    }

    rounds: list[dict[str, Any]] = []
    names: list[str] = []
    for r in range(args.rounds):
        measured = await _round(
            args, tmp / f"round-{r + 1}", pg_urls[r] if pg_urls else None, servers, n, load_seconds, profiler
        )
        names = [name for name in measured if name != "trivial"]
        rounds.append(measured)
    for name in ("trivial", *names):
        results[name] = median_of([measured[name] for measured in rounds])
    if len(rounds) > 1:
        results["rounds"] = rounds
    pg_url = pg_urls[0] if pg_urls else None

    if pg_url is not None and "postgres" in results:
        print("plain asyncpg transactions on PostgreSQL (the write baseline)")
        raw = await bench_raw_txn(pg_url, n, load_seconds)
        results["postgres_raw_txn"] = raw
        results["raw_txn_ratios"] = {
            "write_p50_over_raw_txn_p50": round(
                results["postgres"]["write"]["p50_ms"] / raw["sequential"]["p50_ms"], 3
            ),
            "writes_per_s_over_raw_txns_per_s": round(
                results["postgres"]["throughput"]["writes_per_s"] / raw["throughput"]["txns_per_s"], 3
            ),
        }

    results["ratios"] = {name: ratios(results["trivial"], results[name]) for name in names}
    results["verdicts"] = {
        name: {metric: meets(target_key(name, metric), value) for metric, value in r.items()}
        for name, r in results["ratios"].items()
    }
    if profiler.files:
        results["profiles"] = profiler.files
    if profile_dir is not None:
        (profile_dir / "next-name").unlink(missing_ok=True)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["_stamp"] = stamp
    return results


async def _round(
    args: argparse.Namespace,
    tmp: Path,
    pg_url: str | None,
    servers: list[ServerProcess],
    n: int,
    load_seconds: float,
    profiler: Profiler,
) -> dict[str, Any]:
    """One round on fresh servers and databases: the trivial server and each backend's server
    started together, every latency series in interleaved blocks (`interleave`; one block each
    when profiling, so that a profile holds one series), then each server's 8-client phase."""
    tmp.mkdir(parents=True, exist_ok=True)
    started = {"trivial": launch_trivial(tmp, servers, profiler)}
    backends: list[tuple[str, str]] = []
    if "sqlite" in args.backends:
        backends.append(("sqlite", f"sqlite+aiosqlite:///{tmp / 'sqlite' / 'pfs.db'}"))
    if "postgres" in args.backends and pg_url is not None:
        backends.append(("postgres", pg_url))
    measured: dict[str, Any] = {"trivial": {}}
    try:
        for name, url in backends:
            root = tmp / name / "storage"
            root.parent.mkdir(parents=True, exist_ok=True)
            env = server_env(url, root, args.log_level)
            started[name] = launch(name, profiler.wrap(["serve"]), env, tmp, servers)
            measured[name] = {}
        blocks = 1 if profiler.mode else args.blocks
        print(f"latency: {', '.join(started)}, {n} calls per series in {len(block_sizes(n, blocks))} blocks")
        async with contextlib.AsyncExitStack() as stack:
            series: dict[str, Series] = {}
            for name, server in started.items():
                client = await stack.enter_async_context(make_client(server.url))
                made = (
                    trivial_series(server, client) if name == "trivial" else await pfs_series(server, client)
                )
                series |= {f"{name}.{one}": s for one, s in made.items()}

            def scope(server: ServerProcess, key: str) -> contextlib.AbstractContextManager[Any]:
                return profiler.phase(server, key.split(".", 1)[1])

            for key, summary in (await interleaved(series, WARMUP, n, blocks, scope)).items():
                name, one = key.split(".", 1)
                measured[name][one] = summary
        print("8 clients: trivial")
        with profiler.phase(started["trivial"], "take_throughput"):
            measured["trivial"]["take_throughput"] = await take_throughput(
                started["trivial"], load_seconds, lesson_text("baseline")
            )
        for name, _url in backends:
            print(f"8 clients: panaversity-fs on {name}")
            with profiler.phase(started[name], "throughput"):
                measured[name]["throughput"] = await write_throughput(started[name], load_seconds)
    finally:
        for server in started.values():
            server.stop()
    for name, server in started.items():
        if server.process is not None and server.process.returncode not in (0, -signal.SIGTERM):
            print(f"  warning: {name} server exited with {server.process.returncode}:\n{server.log_tail()}")
    return measured


def median_of(rounds: list[Any]) -> Any:
    """The rounds' results as one: the median of every number (of whole numbers, the lower
    median, itself one of them); the first round's value for anything else (flags, lists, text)."""
    first = rounds[0]
    if isinstance(first, dict):
        return {
            key: median_of([r[key] for r in rounds if isinstance(r, dict) and key in r])
            for key in first  # pyright: ignore[reportUnknownVariableType]
        }
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    if any(not isinstance(r, int | float) or isinstance(r, bool) for r in rounds):
        return first
    if all(isinstance(r, int) for r in rounds):
        return statistics.median_low(rounds)  # counts stay whole numbers
    return statistics.median(rounds)


def _exit_on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_core", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=60 and a 3 s load phase")
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="comma-separated subset of sqlite,postgres (default: both)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="server log level (default INFO, the server default)"
    )
    parser.add_argument(
        "--profile",
        choices=["pyspy", "pyspy-gil", "cprofile"],
        help="profile the servers per phase: py-spy (wall clock, needs py-spy on PATH), py-spy of "
        "the GIL holder only (pyspy-gil: Python CPU, not fsync or socket waits) or cProfile (CPU "
        "clock of the main thread)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU idle (< 15%% of a core)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of every series, medians reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        help="interleaved blocks each latency series is cut into (default 15, 3 with --quick)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/core-*.json)"
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.blocks is None:
        args.blocks = 3 if args.quick else 15
    if args.blocks < 1:
        parser.error("--blocks must be at least 1")
    args.backends = {b.strip() for b in args.backends.split(",") if b.strip()}

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    pg_names = [f"pfs_bench_{os.getpid()}_{r + 1}" for r in range(args.rounds)]
    interrupted = False
    with scratch_run("pfs-bench-", pg_names if "postgres" in args.backends else []) as (
        tmp,
        pg_urls,
        servers,
    ):
        try:
            quiet = wait_quiet(args.wait_quiet)
            print(f"background CPU before the run: {quiet[-1]}% of one core ({len(quiet)} samples)")
            args.background_cpu_pct = quiet
            results = asyncio.run(run(args, tmp, pg_urls, servers))
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            print("interrupted: stopping the servers and cleaning up", file=sys.stderr)
            interrupted = True
        except BaseException:
            for server in servers:
                if server.process is not None and server.process.poll() not in (None, 0, -signal.SIGTERM):
                    print(f"--- {server.name} log tail ---\n{server.log_tail()}", file=sys.stderr)
            raise
    if interrupted:
        return 143

    stamp = results.pop("_stamp")
    out = args.json or RESULTS / f"core-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
