"""Build-planning benchmark: `plan_build` on a 10,000-file book over MCP from a real server.

    uv run python -m bench.bench_builds            # full run (both databases)
    uv run python -m bench.bench_builds --quick    # fewer samples

For each database (SQLite file; a scratch PostgreSQL database `pfs_bench_builds_<pid>` on
`PFS_BENCH_PG_URL`, dropped afterwards) the journal is migrated and filled in bulk with 10,000
base rows (plan_build reads only the journal), then `panaversity-fs serve` is started and one
fastmcp `Client` over streamable HTTP measures, sequentially:

- `read_content` of one real 5 KB lesson (same-run baseline on the same server);
- `plan_build` with no target, each call on a new manifest (one row changed directly in the
  database beforehand), so every call computes and stores a fresh snapshot: the "first call"
  (the first page: 1,000 of the 10,000 files);
- the same, followed by every next page (`cursor`) to the whole listing: its total time, and
  each next page's own;
- `plan_build` with the current hash (status unchanged);
- `plan_build` against an older snapshot with 100 files changed since (the diff).

The trivial FastMCP `echo` server (bench/trivial_server.py) is the transport baseline.
Results: a table, ratios, markdown rows for docs/benchmarks.md, bench/results/builds-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from bench.bench_core import RESULTS, bench_trivial, call, launch, lesson_text, make_client, scratch_run
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import upgrade
from panaversity_fs.db.schema import file_journal
from testkit.measure import machine_info, measure, summary_ms, timed_series
from testkit.processes import ServerProcess, server_env

BOOK = "bench-big-book"
READ_BOOK = "bench-book"
READ_LESSON = "content/01-Bench/01-Reads/01-lesson.md"
FILES = 10_000
CHANGED = 100
TARGET_MS = 300.0
WARMUP = 5


def book_path(i: int) -> str:
    """The i-th file of the big book: 9,000 lessons over 20 parts x 30 chapters, 1,000 images."""
    if i < 9_000:
        part, rest = divmod(i, 450)
        chapter, lesson = divmod(rest, 15)
        return f"content/{part + 1:02d}-Part-{part}/{chapter + 1:02d}-Chapter-{chapter}/{lesson + 1:02d}-lesson.md"
    return f"static/images/figure-{i:05d}.png"


def digest(i: int, generation: int = 0) -> str:
    return hashlib.sha256(f"{i}:{generation}".encode()).hexdigest()


async def populate(url: str) -> None:
    """Migrate and insert the 10,000 base rows in bulk (no storage: plan_build reads the journal)."""
    db = Database.from_settings(Settings(database_url=url))
    try:
        await upgrade(db)
        now = datetime.now(UTC)
        rows = [
            {
                "book_id": BOOK,
                "path": book_path(i),
                "user_id": "__base__",
                "sha256": digest(i),
                "size": 5000,
                "version": 1,
                "last_written_at": now,
                "storage_backend": "fs",
                "publish_pending": False,
            }
            for i in range(FILES)
        ]
        async with db.write() as tx:
            conn = tx.conn
            await conn.execute(insert(file_journal), rows)
    finally:
        await db.dispose()


async def change_rows(url: str, indexes: range, generation: int) -> None:
    """Point the given rows at new hashes, as committed writes would."""
    db = Database.from_settings(Settings(database_url=url))
    try:
        async with db.write() as tx:
            conn = tx.conn
            for i in indexes:
                await conn.execute(
                    update(file_journal)
                    .where(file_journal.c.book_id == BOOK, file_journal.c.path == book_path(i))
                    .values(sha256=digest(i, generation), version=file_journal.c.version + 1)
                )
    finally:
        await db.dispose()


async def bench_backend(server: ServerProcess, url: str, n: int) -> dict[str, Any]:
    """The four series on one running server."""
    out: dict[str, Any] = {}
    async with make_client(server.url) as client:
        await call(
            client, "write_content", {"book_id": READ_BOOK, "path": READ_LESSON, "content": lesson_text("r")}
        )

        def read(_i: int) -> Callable[[], Awaitable[Any]]:
            return lambda: call(client, "read_content", {"book_id": READ_BOOK, "path": READ_LESSON})

        async def read_body() -> tuple[list[float], dict[str, Any]]:
            return await timed_series(WARMUP, n, read), {}

        out["read_content"] = (await measure(server, read_body)).as_dict()

        # First calls: each on a manifest never stored before (one row changed in between).
        rounds = max(5, n // 4)
        await call(client, "plan_build", {"book_id": BOOK})  # warms the pool and the caches
        generation = 1000

        async def new_manifest() -> None:
            nonlocal generation
            generation += 1
            await change_rows(url, range(generation % FILES, generation % FILES + 1), generation)

        async def first_body() -> tuple[list[float], dict[str, Any]]:
            samples: list[float] = []
            page: dict[str, Any] = {}
            for _ in range(rounds):
                await new_manifest()
                started = time.perf_counter()
                page = await call(client, "plan_build", {"book_id": BOOK})
                samples.append(time.perf_counter() - started)
                assert page["total_files"] == FILES and page["changed_count"] == FILES, page["changed_count"]
            return samples, {"response_bytes": len(json.dumps(page)), "files_listed": len(page["files"])}

        out["plan_first"] = (await measure(server, first_body)).as_dict()

        async def whole_body() -> tuple[list[float], dict[str, Any]]:
            wholes: list[float] = []
            pages: list[float] = []
            for _ in range(rounds):
                await new_manifest()
                started = time.perf_counter()
                page = await call(client, "plan_build", {"book_id": BOOK})
                listed = len(page["files"])
                while page.get("next_cursor") is not None:
                    asked = time.perf_counter()
                    page = await call(client, "plan_build", {"book_id": BOOK, "cursor": page["next_cursor"]})
                    pages.append(time.perf_counter() - asked)
                    listed += len(page["files"])
                wholes.append(time.perf_counter() - started)
                assert listed == FILES, listed
            later = summary_ms(pages)
            return wholes, {
                "pages": 1 + len(pages) // rounds,
                "next_page_p50_ms": later["p50_ms"],
                "next_page_p95_ms": later["p95_ms"],
            }

        out["plan_whole"] = (await measure(server, whole_body)).as_dict()

        current = (await call(client, "plan_build", {"book_id": BOOK}))["manifest_hash"]

        def repeat(_i: int) -> Callable[[], Awaitable[Any]]:
            args = {"book_id": BOOK, "target_manifest_hash": current}
            return lambda: call(client, "plan_build", args)

        async def repeat_body() -> tuple[list[float], dict[str, Any]]:
            return await timed_series(WARMUP, n, repeat), {}

        out["plan_unchanged"] = (await measure(server, repeat_body)).as_dict()
        check = await call(client, "plan_build", {"book_id": BOOK, "target_manifest_hash": current})
        assert check["status"] == "unchanged", check

        await change_rows(url, range(2000, 2000 + CHANGED), generation=7)

        def diff(_i: int) -> Callable[[], Awaitable[Any]]:
            args = {"book_id": BOOK, "target_manifest_hash": current}
            return lambda: call(client, "plan_build", args)

        async def diff_body() -> tuple[list[float], dict[str, Any]]:
            return await timed_series(WARMUP, n, diff), {}

        out["plan_diff_100"] = (await measure(server, diff_body)).as_dict()
        check = await call(client, "plan_build", {"book_id": BOOK, "target_manifest_hash": current})
        assert check["changed_count"] == CHANGED and check["target_found"] is True, check["changed_count"]
    return out


async def run(
    args: argparse.Namespace, tmp: Path, pg_url: str | None, servers: list[ServerProcess]
) -> dict[str, Any]:
    n = 20 if args.quick else 60
    results: dict[str, Any] = {
        "benchmark": "builds",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python -m bench.bench_builds", *sys.argv[1:]]),
        "machine": machine_info(),
        "config": {"files": FILES, "changed": CHANGED, "n": n, "warmup": WARMUP, "target_ms": TARGET_MS},
    }
    print("trivial FastMCP server")
    trivial = launch(
        "trivial", [sys.executable, "-m", "bench.trivial_server"], dict(os.environ), tmp, servers
    )
    try:
        results["trivial_echo"] = (await bench_trivial(trivial, n, warmup=WARMUP))["echo"]
    finally:
        trivial.stop()
    backends = [("sqlite", f"sqlite+aiosqlite:///{tmp / 'pfs.db'}")]
    if pg_url is not None:
        backends.append(("postgres", pg_url))
    for name, url in backends:
        print(f"panaversity-fs on {name}: populating {FILES} journal rows")
        await populate(url)
        env = server_env(url, tmp / f"{name}-storage", "WARNING")
        server = launch(name, [sys.executable, "-m", "panaversity_fs", "serve"], env, tmp, servers)
        try:
            results[name] = await bench_backend(server, url, n)
        finally:
            server.stop()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def report(results: dict[str, Any]) -> str:
    trivial = results["trivial_echo"]["p50_ms"]
    lines = [
        "| series | p50 ms | p95 ms | server CPU ms/call | vs trivial echo p50 | target |",
        "|---|---|---|---|---|---|",
        (
            f"| trivial FastMCP `echo` | {trivial:.2f} | {results['trivial_echo']['p95_ms']:.2f} | "
            f"{results['trivial_echo']['server_cpu_ms_per_call']:.2f} | 1.00 | |"
        ),
    ]
    labels = {
        "read_content": "read_content (5 KB lesson)",
        "plan_first": f"plan_build, {FILES} files, new manifest (stored), no target: first page",
        "plan_whole": f"plan_build, {FILES} files, new manifest, no target: every page (whole listing)",
        "plan_unchanged": f"plan_build, {FILES} files, target = current (unchanged)",
        "plan_diff_100": f"plan_build, {FILES} files, diff vs older snapshot ({CHANGED} changed)",
    }
    for backend in ("sqlite", "postgres"):
        if backend not in results:
            continue
        for key, label in labels.items():
            s = results[backend][key]
            verdict = ""
            if key == "plan_whole":
                slowest = max(s["next_page_p95_ms"], results[backend]["plan_first"]["p95_ms"])
                verdict = "met" if slowest <= TARGET_MS else "**missed**"
                verdict = (
                    f"{s['pages']} calls; next page p50 {s['next_page_p50_ms']:.0f} / p95 "
                    f"{s['next_page_p95_ms']:.0f} ms; every call ≤ {TARGET_MS:.0f} ms: {verdict}"
                )
            elif key.startswith("plan"):
                verdict = "met" if s["p95_ms"] <= TARGET_MS else "**missed**"
                verdict = f"≤ {TARGET_MS:.0f} ms: {verdict}"
            lines.append(
                f"| {backend}: {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | "
                f"{s['server_cpu_ms_per_call']:.2f} | {s['p50_ms'] / trivial:.1f} | {verdict} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_builds", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/builds-*.json)"
    )
    args = parser.parse_args(argv)
    databases = [f"pfs_bench_builds_{os.getpid()}"] if "postgres" in args.backends else []
    with scratch_run("pfs-bench-builds-", databases) as (tmp, pg_urls, servers):
        results = asyncio.run(run(args, tmp, pg_urls[0] if pg_urls else None, servers))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.json or RESULTS / f"builds-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
