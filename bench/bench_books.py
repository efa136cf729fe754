"""Whole-book benchmark: bulk reads and grep of a real `panaversity-fs serve` over HTTP.

    uv run python -m bench.bench_books            # full run (200 MB book, 5 repetitions)
    uv run python -m bench.bench_books --quick    # smaller book (40 MB), 3 repetitions

Seeds, in-process through the files engine (the same write protocol as the tools), a SQLite +
fs store holding:

- `bench-lessons`: 500 lessons of ~5 KB (5 parts x 10 chapters x 10 lessons);
- `bench-big`: 500 markdown files (~100 MB in all) and 500 binary assets (~100 MB).

The same files are also written as plain files to a scratch folder (the baselines' input).
Then one `panaversity-fs serve` subprocess starts on a free loopback port and a fastmcp
`Client` over streamable HTTP measures, with the baselines measured in the same run:

1. `read_content(scope="book")` of the 500 lessons, page after page (limit 100 and 500),
   against reading the 500 files from local disk with plain Python (`open().read()`, and
   with `hashlib.sha256` too, since the server verifies every file's hash).
2. `grep_search` over `bench-big` (a pattern matching ~1,000 lines, max_results 1000) against
   `re` and `re2` (google-re2) over the same 100 MB of markdown from local disk.

Results: a table on stdout, markdown rows for docs/benchmarks.md and
bench/results/books-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import re2  # type: ignore[import-untyped]

from bench.bench_core import RESULTS, call, make_client
from panaversity_fs.app.resources import open_resources
from panaversity_fs.config import Settings
from panaversity_fs.content.service import Target
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from testkit.measure import machine_info, timed_series
from testkit.processes import ServerProcess, free_port, server_env

LESSONS_BOOK = "bench-lessons"
BIG_BOOK = "bench-big"
GREP_PATTERN = r"needle-[0-9]+ found"
VOCABULARY = [
    "python",
    "variable",
    "function",
    "loop",
    "class",
    "module",
    "import",
    "return",
    "value",
    "list",
    "dict",
    "tuple",
    "string",
    "async",
    "await",
    "task",
    "event",
    "thread",
    "process",
    "memory",
    "file",
    "path",
    "stream",
    "buffer",
    "error",
    "exception",
    "test",
    "assert",
    "model",
    "agent",
    "tool",
    "server",
    "client",
    "request",
    "response",
    "journal",
    "audit",
    "hash",
    "overlay",
]


def lesson_paths(count: int) -> list[str]:
    paths = []
    for i in range(count):
        part, chapter, number = i // 100 + 1, (i // 10) % 10 + 1, i % 10 + 1
        paths.append(
            f"content/{part:02d}-Part{part}/{chapter:02d}-Chapter{chapter}/{number:02d}-lesson-{number}.md"
        )
    return paths


def prose_lines(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(VOCABULARY, k=rng.randint(6, 16))) for _ in range(count)]


def markdown_file(rng: random.Random, pool: list[str], size: int, needles: list[int]) -> bytes:
    lines: list[str] = []
    total = 0
    while total < size:
        line = rng.choice(pool)
        lines.append(line)
        total += len(line) + 1
    for needle in needles:
        lines.insert(rng.randrange(len(lines)), f"the needle-{needle} found here")
    return ("\n".join(lines) + "\n").encode()


def build_books(scratch: Path, big_markdown_bytes: int, big_binary_bytes: int) -> dict[str, dict[str, bytes]]:
    """The two books' files (path -> bytes), also written under scratch/plain/{book}/."""
    rng = random.Random(20261122)
    pool = prose_lines(rng, 4000)
    lessons = {path: markdown_file(rng, pool, 5 * 1024, []) for path in lesson_paths(500)}
    per_file = big_markdown_bytes // 500
    big: dict[str, bytes] = {}
    for index, path in enumerate(lesson_paths(500)):
        big[path] = markdown_file(rng, pool, per_file, [index * 2, index * 2 + 1])
    per_asset = big_binary_bytes // 500
    for index in range(500):
        big[f"static/images/figure-{index:03d}.png"] = rng.randbytes(per_asset)
    books = {LESSONS_BOOK: lessons, BIG_BOOK: big}
    for book, files in books.items():
        for path, data in files.items():
            target = scratch / "plain" / book / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return books


async def seed(settings: Settings, books: dict[str, dict[str, bytes]]) -> None:
    caller = Caller("bench-seeder")
    async with open_resources(settings, background=False) as resources:
        semaphore = asyncio.Semaphore(8)

        async def one(book: str, path: str, data: bytes) -> None:
            target = Target.asset(book, path) if path.startswith("static/") else Target.content(book, path)
            async with semaphore:
                await resources.files.write(
                    Operation(caller, "import"), target, data, hashlib.sha256(data).hexdigest(), None
                )

        await asyncio.gather(*(one(b, p, d) for b, files in books.items() for p, d in files.items()))
        await resources.trail.recorder.flush()


def repeat_sync(n: int, run: Callable[[], Any]) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


async def bench_reads(url: str, n: int, plain: Path) -> dict[str, Any]:
    files = sorted(p for p in (plain / LESSONS_BOOK).rglob("*.md"))

    def disk_read() -> None:
        for f in files:
            with f.open("rb") as handle:
                handle.read()

    def disk_read_hash() -> None:
        for f in files:
            with f.open("rb") as handle:
                hashlib.sha256(handle.read()).hexdigest()

    results: dict[str, Any] = {}
    async with make_client(url) as client:
        for limit in (100, 500):
            pages: list[int] = []

            async def whole_book(limit: int = limit, pages: list[int] = pages) -> None:
                cursor = None
                count = 0
                got = 0
                while True:
                    arguments: dict[str, Any] = {"book_id": LESSONS_BOOK, "scope": "book", "limit": limit}
                    if cursor:
                        arguments["cursor"] = cursor
                    page = await call(client, "read_content", arguments)
                    count += 1
                    got += len(page["files"])
                    cursor = page.get("next_cursor")
                    if cursor is None:
                        break
                assert got == 500, got
                pages.append(count)

            samples = await timed_series(1, n, lambda _i, run=whole_book: run)  # one warm-up call
            results[f"mcp_limit_{limit}"] = {
                "median_s": statistics.median(samples),
                "samples": samples,
                "pages": pages[-1],
            }
    disk_read()
    results["disk_read"] = {"median_s": statistics.median(repeat_sync(n, disk_read))}
    results["disk_read_sha256"] = {"median_s": statistics.median(repeat_sync(n, disk_read_hash))}
    return results


async def bench_grep(url: str, n: int, plain: Path) -> dict[str, Any]:
    files = sorted(p for p in (plain / BIG_BOOK / "content").rglob("*.md"))
    markdown_bytes = sum(f.stat().st_size for f in files)
    python_re = re.compile(GREP_PATTERN.encode(), re.MULTILINE)
    google_re2 = re2.compile(GREP_PATTERN.encode())

    def disk_grep(regex: Any) -> Callable[[], int]:
        def run() -> int:
            found = 0
            for f in files:
                data = f.read_bytes()
                found += sum(1 for _ in regex.finditer(data))
            return found

        return run

    results: dict[str, Any] = {"markdown_bytes": markdown_bytes, "files": len(files)}
    async with make_client(url) as client:
        outcome: dict[str, Any] = {}

        async def grep() -> None:
            outcome.update(
                await call(
                    client, "grep_search", {"book_id": BIG_BOOK, "pattern": GREP_PATTERN, "max_results": 1000}
                )
            )

        samples = await timed_series(1, n, lambda _i: grep)  # one warm-up call
    results["mcp_grep"] = {
        "median_s": statistics.median(samples),
        "samples": samples,
        "matches": outcome["matches"],
        "files_searched": outcome["files_searched"],
        "truncated": outcome.get("next_cursor") is not None,
    }
    for name, regex in (("disk_re", python_re), ("disk_re2", google_re2)):
        run = disk_grep(regex)
        count = run()
        results[name] = {"median_s": statistics.median(repeat_sync(n, run)), "matches": count}
    return results


def report(results: dict[str, Any]) -> str:
    reads, grep = results["reads"], results["grep"]
    mb = grep["markdown_bytes"] / 1e6
    rows = [
        "| series | median s | vs baseline |",
        "|---|---|---|",
        f"| local disk: read 500 lessons (`open().read()`) | {reads['disk_read']['median_s']:.4f} | baseline |",
        (
            f"| local disk: read + sha256 500 lessons | {reads['disk_read_sha256']['median_s']:.4f} | "
            f"{reads['disk_read_sha256']['median_s'] / reads['disk_read']['median_s']:.1f}x |"
        ),
    ]
    for limit in (100, 500):
        series = reads[f"mcp_limit_{limit}"]
        rows.append(
            f"| MCP HTTP: read_content(scope=book), limit {limit} ({series['pages']} pages) | "
            f"{series['median_s']:.4f} | {series['median_s'] / reads['disk_read']['median_s']:.1f}x |"
        )
    rows += [
        f"| local disk: `re` over {grep['files']} files, {mb:.0f} MB markdown | {grep['disk_re']['median_s']:.3f} | baseline |",
        (
            f"| local disk: `re2` over the same files | {grep['disk_re2']['median_s']:.3f} | "
            f"{grep['disk_re2']['median_s'] / grep['disk_re']['median_s']:.2f}x |"
        ),
        (
            f"| MCP HTTP: grep_search ({grep['mcp_grep']['matches']} matches, {grep['mcp_grep']['files_searched']} files, "
            f"truncated={grep['mcp_grep']['truncated']}) | {grep['mcp_grep']['median_s']:.3f} | "
            f"{grep['mcp_grep']['median_s'] / grep['disk_re']['median_s']:.2f}x of `re`, "
            f"{grep['mcp_grep']['median_s'] / grep['disk_re2']['median_s']:.2f}x of `re2` |"
        ),
    ]
    return "\n".join(rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="pfs-bench-books-"))
    server: ServerProcess | None = None
    try:
        markdown = 20_000_000 if args.quick else 100_000_000
        print(f"building books in {scratch} ({markdown / 1e6:.0f} MB markdown + as much binary)")
        started = time.perf_counter()
        books = build_books(scratch, markdown, markdown)
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{scratch / 'pfs.db'}",
            storage_backend="fs",
            storage_root=scratch / "store",
        )
        await seed(settings, books)
        print(
            f"  seeded {sum(len(f) for f in books.values())} files in {time.perf_counter() - started:.1f} s"
        )
        port = free_port()
        env = server_env(settings.database_url, settings.storage_root, args.log_level)
        env["PANAVERSITY_SERVER_PORT"] = str(port)
        server = ServerProcess.command(
            "pfs-sqlite", [sys.executable, "-m", "panaversity_fs", "serve"], env, scratch / "server.log", port
        )
        server.start()
        reads = await bench_reads(server.url, args.n, scratch / "plain")
        grep = await bench_grep(server.url, args.n, scratch / "plain")
        return {
            "date": datetime.now(UTC).isoformat(),
            "machine": machine_info(),
            "quick": args.quick,
            "reads": reads,
            "grep": grep,
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40 MB book, 3 repetitions")
    parser.add_argument("--n", type=int, default=None, help="repetitions per series (default 5, quick 3)")
    parser.add_argument(
        "--log-level", default="INFO", help="server log level (default INFO, the server default)"
    )
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/books-*.json)"
    )
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 3 if args.quick else 5
    results = asyncio.run(run(args))
    table = report(results)
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.json or RESULTS / f"books-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
