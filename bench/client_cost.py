"""What a read costs its client: the fastmcp client's CPU per call, and its output-schema share.

    uv run python -m bench.client_cost                      # SQLite, 3 rounds of 400 calls
    uv run python -m bench.client_cost --backend postgres --rounds 5

A read's wall time is the client's CPU as well as the server's. This starts the trivial server
and `panaversity-fs serve`, then times (the client's own thread CPU and the wall clock) three
series in turn, `--rounds` times: `give` (a 5 KB answer without an output schema), a 5 KB
`read_content`, and the same read with the client's cached output schema of `read_content`
cleared, so that neither the fastmcp client (its type adapter for the schema) nor the MCP SDK
(its `jsonschema` check) does any schema work for it. The last two differ only by that work.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.bench_core import (
    BOOK,
    LESSON_BYTES,
    READ_LESSON,
    call,
    launch,
    launch_trivial,
    lesson_text,
    make_client,
    scratch_run,
)
from testkit.processes import ServerProcess, server_env

WARMUP = 50
SERIES = ("give", "read", "read, no client schema work")


def parse() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400, help="calls per series and round")
    return parser.parse_args()


async def run(args: argparse.Namespace, tmp: Path, pg_urls: list[str], servers: list[ServerProcess]) -> None:
    """Start both servers, then time each series `args.rounds` times; print the medians."""
    url = pg_urls[0] if pg_urls else f"sqlite+aiosqlite:///{tmp / 'pfs'}.db"
    env = server_env(url, tmp / "storage", "WARNING")
    pfs = launch("pfs", [sys.executable, "-m", "panaversity_fs", "serve"], env, tmp, servers)
    trivial = launch_trivial(tmp, servers)
    async with make_client(pfs.url) as reader, make_client(trivial.url) as giver:
        await call(
            reader, "write_content", {"book_id": BOOK, "path": READ_LESSON, "content": lesson_text("x")}
        )
        read_args = {"book_id": BOOK, "path": READ_LESSON}
        schemas: dict[str, Any] = reader.session._tool_output_schemas  # pyright: ignore[reportPrivateUsage]
        validators: dict[str, Any] = reader.session._tool_output_validators  # pyright: ignore[reportPrivateUsage]
        await call(reader, "read_content", read_args)
        schema = schemas["read_content"]
        assert schema, "read_content declares an output schema"

        def with_schema(kept: bool) -> None:
            schemas["read_content"] = schema if kept else None
            validators.pop("read_content", None)

        series: dict[str, tuple[Callable[[], Awaitable[Any]], bool]] = {
            "give": (lambda: call(giver, "give", {"size": LESSON_BYTES}), True),
            "read": (lambda: call(reader, "read_content", read_args), True),
            "read, no client schema work": (lambda: call(reader, "read_content", read_args), False),
        }
        cpu: dict[str, list[float]] = {name: [] for name in SERIES}
        wall: dict[str, list[float]] = {name: [] for name in SERIES}
        for one, kept in series.values():
            with_schema(kept)
            for _ in range(WARMUP):
                await one()
        for _ in range(args.rounds):
            for name, (one, kept) in series.items():
                with_schema(kept)
                cpu_started, wall_started = time.thread_time(), time.perf_counter()
                for _ in range(args.calls):
                    await one()
                cpu[name].append((time.thread_time() - cpu_started) / args.calls * 1000)
                wall[name].append((time.perf_counter() - wall_started) / args.calls * 1000)
        with_schema(True)
    print(f"{args.backend}: {args.rounds} rounds of {args.calls} sequential calls; medians (ranges)")
    for name in SERIES:
        print(
            f"{name:28s} client CPU {statistics.median(cpu[name]):.3f} ms/call "
            f"({min(cpu[name]):.3f}-{max(cpu[name]):.3f})   wall {statistics.median(wall[name]):.3f} ms"
        )


def main() -> None:
    """Run the measurement (on a scratch PostgreSQL database, dropped afterwards)."""
    args = parse()
    pg_names = ["pfs_client_cost"] if args.backend == "postgres" else []
    with scratch_run("pfs-client-cost-", pg_names) as (tmp, pg_urls, servers):
        asyncio.run(run(args, tmp, pg_urls, servers))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
