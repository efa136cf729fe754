"""Wall latency of two trees' servers side by side, with the trivial server, calls interleaved.

    uv run python -m bench.ab_wall --old /work/old --backend postgres --tool write
    uv run python -m bench.ab_wall --old /work/old --new . --backend sqlite --tool read --blocks 40

This machine's speed drifts by tens of per cent within minutes, more than most changes a pass
makes, so a tree run after another (`bench.served_cpu`) often measures the drift. Here the
server of each tree (`OLD/.venv/bin/python -m panaversity_fs serve`, each on its own database
and folder) and the trivial server run at once, and one client makes `--per-block` sequential
calls to each in turn, `--blocks` times, the order reversed every block. Each block's p50 is
kept; the report is the median of them per server, its ratio to the trivial server's (`give`
for reads, `take` for writes: 5 KB lessons, as `bench_core`), and the server's CPU per call
over all blocks. Each tree needs its own `uv sync` (a worktree: `git worktree add ../old REV`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench.bench_core import (
    BOOK,
    LESSON_BYTES,
    READ_LESSON,
    WRITE_LESSON,
    call,
    launch,
    launch_trivial,
    lesson_text,
    make_client,
    scratch_run,
)
from testkit.processes import ServerProcess, server_env

WARMUP = 50


def parse() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", type=Path, required=True, help="the tree measured first (a worktree)")
    parser.add_argument(
        "--new", type=Path, default=Path(), help="the tree measured against it (default: here)"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--tool", choices=("read", "write"), default="write")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--per-block", type=int, default=60)
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="both servers' log level (default WARNING; the bench's is INFO)",
    )
    return parser.parse_args()


TREES = ("old", "new")


async def run(args: argparse.Namespace, tmp: Path, pg_urls: list[str], servers: list[ServerProcess]) -> None:
    """Start both trees' servers and the trivial one, then measure them (`measure`)."""
    trees = dict(zip(TREES, (args.old.resolve(), args.new.resolve()), strict=True))
    urls: dict[str, str] = {}
    processes: dict[str, psutil.Process] = {}
    for index, (name, tree) in enumerate(trees.items()):
        url = pg_urls[index] if pg_urls else f"sqlite+aiosqlite:///{tmp / name}.db"
        env = server_env(url, tmp / f"storage-{name}", args.log_level) | {"PYTHONPATH": str(tree)}
        argv = [str(tree / ".venv" / "bin" / "python"), "-m", "panaversity_fs", "serve"]
        server = launch(name, argv, env, tmp, servers)
        urls[name], processes[name] = server.url, psutil.Process(server.pid)
    trivial = launch_trivial(tmp, servers)
    urls["trivial"], processes["trivial"] = trivial.url, psutil.Process(trivial.pid)
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(make_client(url)) for name, url in urls.items()}
        await measure(args, await prepare(args.tool, clients), processes)


async def prepare(tool: str, clients: dict[str, Any]) -> dict[str, Callable[[int], Awaitable[Any]]]:
    """One call per server, `i` making each write's content differ; the files they need made."""
    lesson = lesson_text("base")
    heads: dict[str, str] = {}
    calls: dict[str, Callable[[int], Awaitable[Any]]] = {}
    for name, client in clients.items():
        if name == "trivial":
            if tool == "read":
                calls[name] = lambda _i, c=client: call(c, "give", {"size": LESSON_BYTES})
            else:
                calls[name] = lambda i, c=client: call(c, "take", {"text": f"{i}{lesson}"})
            continue
        await call(client, "write_content", {"book_id": BOOK, "path": READ_LESSON, "content": lesson})
        made = await call(client, "write_content", {"book_id": BOOK, "path": WRITE_LESSON, "content": lesson})
        heads[name] = made["file_hash"]
        if tool == "read":
            calls[name] = lambda _i, c=client: call(c, "read_content", {"book_id": BOOK, "path": READ_LESSON})
            continue

        async def write(i: int, c: Any = client, name: str = name) -> None:
            arguments = {
                "book_id": BOOK,
                "path": WRITE_LESSON,
                "content": lesson_text(f"v{i}"),
                "expected_hash": heads[name],
            }
            heads[name] = (await call(c, "write_content", arguments))["file_hash"]

        calls[name] = write
    return calls


async def measure(
    args: argparse.Namespace,
    calls: dict[str, Callable[[int], Awaitable[Any]]],
    processes: dict[str, psutil.Process],
) -> None:
    """Warm every server up, run the interleaved blocks, print one line per server."""
    sequence = 0
    for one in calls.values():
        for _ in range(WARMUP):
            sequence += 1
            await one(sequence)
    p50s: dict[str, list[float]] = {name: [] for name in calls}
    cpu = dict.fromkeys(calls, 0.0)
    for block in range(args.blocks):
        order = list(calls) if block % 2 == 0 else list(reversed(list(calls)))
        for name in order:
            times = processes[name].cpu_times()
            latencies: list[float] = []
            for _ in range(args.per_block):
                sequence += 1
                started = time.perf_counter()
                await calls[name](sequence)
                latencies.append(time.perf_counter() - started)
            after = processes[name].cpu_times()
            cpu[name] += after.user + after.system - times.user - times.system
            p50s[name].append(statistics.median(latencies) * 1000)
    baseline = statistics.median(p50s["trivial"])
    n = args.blocks * args.per_block
    print(f"{args.backend}, {args.tool}: {args.blocks} blocks of {args.per_block} calls per server")
    for name, blocks in p50s.items():
        median = statistics.median(blocks)
        print(
            f"{name:8} p50 {median:6.3f} ms (blocks {min(blocks):.2f}-{max(blocks):.2f})"
            f"  / trivial {median / baseline:5.3f}  server CPU {cpu[name] / n * 1000:5.3f} ms/call"
        )


def main() -> None:
    """Run the comparison (on scratch PostgreSQL databases, dropped afterwards)."""
    args = parse()
    pg_names = [f"pfs_abwall_{name}" for name in TREES] if args.backend == "postgres" else []
    with scratch_run("pfs-abwall-", pg_names) as (tmp, pg_urls, servers):
        asyncio.run(run(args, tmp, pg_urls, servers))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
