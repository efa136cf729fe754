"""The server's CPU per call, user and system time apart, over one long series per tool: `give`
and `take` on the trivial server, `read_content` and `write_content` (5 KB lessons) on
PanaversityFS.

    uv run python -m bench.served_cpu                             # 1,500 calls a series, SQLite and PostgreSQL
    uv run python -m bench.served_cpu --calls 3000 --backends sqlite

Meant for comparing two trees (run it from each in turn, alternating): `bench_core`'s series
are 300 calls; this one counts the CPU of the server's whole process (`psutil`, every thread,
user and system time) over `--calls` sequential calls after 30 warm-up calls, from one fastmcp
client, so a change of a tenth of a millisecond per call stands out of this machine's noise.
PostgreSQL runs on a scratch database (`pfs_cpu_<pid>` on `PFS_BENCH_PG_URL`), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench.bench_core import (
    BOOK,
    READ_LESSON,
    call,
    launch,
    launch_trivial,
    lesson_text,
    make_client,
    scratch_run,
)
from testkit.processes import ServerProcess, server_env

WARMUP = 30


async def series(server: ServerProcess, name: str, calls: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """Make `WARMUP` + `calls` sequential calls with `one(i)`; print wall time and the server's
    user and system CPU per timed call."""
    process = psutil.Process(server.pid)
    for i in range(WARMUP):
        await one(i)
    before, started = process.cpu_times(), time.perf_counter()
    for i in range(WARMUP, WARMUP + calls):
        await one(i)
    after, wall = process.cpu_times(), time.perf_counter() - started
    user = (after.user - before.user) / calls * 1000
    system = (after.system - before.system) / calls * 1000
    print(
        f"{server.name:9} {name:14} wall {wall / calls * 1000:5.2f} ms"
        f"  server CPU {user + system:5.3f} ms (user {user:5.3f}, system {system:5.3f})"
    )


async def trivial_series(server: ServerProcess, calls: int) -> None:
    lesson = lesson_text("baseline")
    async with make_client(server.url) as client:
        await series(server, "give", calls, lambda _i: call(client, "give", {"size": len(lesson)}))
        await series(server, "take", calls, lambda i: call(client, "take", {"text": f"{i}{lesson}"}))


async def pfs_series(server: ServerProcess, calls: int) -> None:
    lesson = lesson_text("base")
    async with make_client(server.url) as client:
        written = await call(
            client, "write_content", {"book_id": BOOK, "path": READ_LESSON, "content": lesson}
        )
        read = {"book_id": BOOK, "path": READ_LESSON}
        await series(server, "read_content", calls, lambda _i: call(client, "read_content", read))
        last = {"hash": written["file_hash"]}

        async def write(i: int) -> None:
            arguments = read | {"content": f"{i}{lesson}", "expected_hash": last["hash"]}
            last["hash"] = (await call(client, "write_content", arguments))["file_hash"]

        await series(server, "write_content", calls, write)


async def run(args: argparse.Namespace, tmp: Path, pg_url: str | None, servers: list[ServerProcess]) -> None:
    trivial = launch_trivial(tmp, servers)
    await trivial_series(trivial, args.calls)
    trivial.stop()
    backends = [("sqlite", f"sqlite+aiosqlite:///{tmp / 'pfs.db'}")] if "sqlite" in args.backends else []
    if pg_url is not None:
        backends.append(("postgres", pg_url))
    for name, url in backends:
        env = server_env(url, tmp / name, args.log_level)
        server = launch(name, [sys.executable, "-m", "panaversity_fs", "serve"], env, tmp, servers)
        await pfs_series(server, args.calls)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the series; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.served_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="timed calls per series (default 1500)")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite, postgres or both (default)")
    parser.add_argument(
        "--log-level", default="INFO", help="server log level (default INFO, the server default)"
    )
    args = parser.parse_args(argv)
    args.backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    databases = [f"pfs_cpu_{os.getpid()}"] if "postgres" in args.backends else []
    with scratch_run("pfs-cpu-", databases) as (tmp, pg_urls, servers):
        asyncio.run(run(args, tmp, pg_urls[0] if pg_urls else None, servers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
