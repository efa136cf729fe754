"""Archive benchmark: a 500-file / 200 MB book downloaded as a ZIP over HTTP vs Python's `zipfile`.

    uv run python -m bench.bench_archive            # 3 timed runs of each
    uv run python -m bench.bench_archive --runs 5

In one run, on one machine:

1. Generates the book (seeded): 250 markdown lessons and 250 incompressible PNG-typed images,
   200 MB in all, sizes 0.5-1.5x the mean. Writes it to a local folder and, through
   the files engine, into a SQLite + fs PanaversityFS store.
2. Baseline: Python's `zipfile` writes the same files from the local folder to /dev/null with
   the same choices (markdown deflated at level 1, images stored).
3. Starts `panaversity-fs serve` on that store, asks `get_book_archive(scope="all")` over MCP
   HTTP, and downloads the URL with httpx (bytes counted, discarded) while sampling the server's
   RSS every 20 ms.
4. In-process, the same members zipped by `stream_zip` on a thread (what the server does) vs
   `async_stream_zip`, with the event loop's worst stall measured by a 5 ms ticker.

Targets: download time <= 1.5x the zipfile time and <= 5 s; peak RSS growth < 32 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastmcp import Client
from mcp_types import Implementation
from stream_zip import NO_COMPRESSION_32, ZIP_AUTO, async_stream_zip, stream_zip

from bench.bench_core import RESULTS
from panaversity_fs.config import Settings
from testkit.books import BookFile, book_files, write_files
from testkit.measure import RssSampler, machine_info
from testkit.processes import ServerProcess, free_port, server_env

MiB = 1024 * 1024
BOOK = "bench-archive"
FILES = 500
TOTAL = 200 * MiB


class _Unseekable:
    """A write-only stream (like a socket): /dev/null's `tell()` of 0 would corrupt zipfile's offsets."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()


def zipfile_baseline(folder: Path, files: list[BookFile]) -> float:
    """Seconds for `zipfile` to write the book from `folder` to /dev/null."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull, zipfile.ZipFile(_Unseekable(devnull), "w") as archive:
        for f in files:
            compress = zipfile.ZIP_STORED if f.path.endswith(".png") else zipfile.ZIP_DEFLATED
            archive.write(folder / f.path, f.path, compress_type=compress, compresslevel=1)
    return time.perf_counter() - started


def download(url: str, pid: int) -> dict[str, float]:
    """Time one download and sample the server's RSS (idle = just before, over 200 ms)."""
    received = 0
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        with httpx.stream("GET", url, timeout=600) as response:
            response.raise_for_status()
            for chunk in response.iter_raw(1024 * 1024):
                received += len(chunk)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "zip_mb": received / MiB, "rss_growth_mb": rss.growth / MiB}


def members(files: list[BookFile]) -> Iterator[tuple[str, datetime, int, Any, Iterator[bytes]]]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for f in files:
        method = (
            NO_COMPRESSION_32(len(f.data), zlib_crc(f.data))
            if f.path.endswith(".png")
            else ZIP_AUTO(len(f.data), level=1)
        )
        yield f.path, now, 0o100644, method, iter((f.data,))


def zlib_crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


async def loop_stall(stop: asyncio.Event) -> float:
    """Worst delay of a 5 ms ticker while `stop` is unset (how blocked the loop was)."""
    worst = 0.0
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        worst = max(worst, time.perf_counter() - before - 0.005)
    return worst


async def zip_on_thread(files: list[BookFile]) -> tuple[float, float]:
    stop = asyncio.Event()
    ticker = asyncio.create_task(loop_stall(stop))
    started = time.perf_counter()
    await asyncio.to_thread(lambda: sum(len(b) for b in stream_zip(members(files), chunk_size=256 * 1024)))
    seconds = time.perf_counter() - started
    stop.set()
    return seconds, await ticker


async def zip_async(files: list[BookFile]) -> tuple[float, float]:
    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async def async_members() -> AsyncIterator[Any]:
        for name, modified, mode, method, it in members(files):
            yield name, modified, mode, method, chunks(next(it))

    stop = asyncio.Event()
    ticker = asyncio.create_task(loop_stall(stop))
    started = time.perf_counter()
    async for _block in async_stream_zip(async_members(), chunk_size=256 * 1024):
        pass
    seconds = time.perf_counter() - started
    stop.set()
    return seconds, await ticker


async def run(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pfs-bench-archive-") as tmp:
        root = Path(tmp)
        print("generating the book ...")
        files = book_files(FILES, TOTAL, seed=7)
        for f in files:
            (root / "src" / f.path).parent.mkdir(parents=True, exist_ok=True)
            (root / "src" / f.path).write_bytes(f.data)
        settings = Settings(database_url=f"sqlite+aiosqlite:///{root}/pfs.db", storage_root=root / "store")
        await write_files(settings, BOOK, files)
        print(f"  {len(files)} files, {sum(len(f.data) for f in files) / MiB:.0f} MiB")

        baseline = [zipfile_baseline(root / "src", files) for _ in range(runs + 1)][1:]
        port = free_port()
        server = ServerProcess.command(
            "panaversity-fs",
            ["python", "-m", "panaversity_fs", "serve", "--port", str(port)],
            server_env(settings.database_url, root / "store", "INFO"),
            root / "server.log",
            port,
        )
        server.start()
        try:
            info = Implementation(name="bench-archive-agent", version="1")
            async with Client(f"{server.url}/mcp", client_info=info) as client:
                result = await client.call_tool("get_book_archive", {"book_id": BOOK, "scope": "all"})
            url = str((result.structured_content or {})["url"])
            downloads = [await asyncio.to_thread(download, url, server.pid) for _ in range(runs)]
        finally:
            server.stop()
        thread = [await zip_on_thread(files) for _ in range(runs)]
        async_ = [await zip_async(files) for _ in range(runs)]

    best_http = min(d["seconds"] for d in downloads)
    best_zipfile = min(baseline)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "files": FILES,
        "total_mib": TOTAL / MiB,
        "zipfile_seconds": baseline,
        "http_downloads": downloads,
        "http_best_seconds": best_http,
        "zipfile_best_seconds": best_zipfile,
        "ratio_best": best_http / best_zipfile,
        "ratio_median": statistics.median(d["seconds"] for d in downloads) / statistics.median(baseline),
        "peak_rss_growth_mb": max(d["rss_growth_mb"] for d in downloads),
        "stream_zip_thread": {
            "seconds": [t for t, _ in thread],
            "worst_loop_stall_ms": max(s for _, s in thread) * 1000,
        },
        "async_stream_zip": {
            "seconds": [t for t, _ in async_],
            "worst_loop_stall_ms": max(s for _, s in async_) * 1000,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each measurement")
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/archive-*.json)"
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.runs))
    out = args.json or RESULTS / f"archive-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nzipfile -> /dev/null      : {', '.join(f'{s:.2f}' for s in results['zipfile_seconds'])} s")
    http_times = ", ".join(f"{d['seconds']:.2f}" for d in results["http_downloads"])
    print(f"HTTP archive download     : {http_times} s")
    print(
        f"ratio (best / median)     : {results['ratio_best']:.2f} / {results['ratio_median']:.2f}  (target <= 1.5)"
    )
    print(f"best download             : {results['http_best_seconds']:.2f} s  (target <= 5 s)")
    print(f"peak server RSS growth    : {results['peak_rss_growth_mb']:.1f} MiB  (target < 32)")
    for name in ("stream_zip_thread", "async_stream_zip"):
        r = results[name]
        print(f"{name:<26}: {min(r['seconds']):.2f} s, worst loop stall {r['worst_loop_stall_ms']:.1f} ms")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
