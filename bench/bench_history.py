"""What keeping every version costs: write latency and throughput with history against the same
server without it, storage per version, and old-version reads on a file with 1,000 versions.

    uv run python -m bench.bench_history            # N=300 writes per series, 10 s of load
    uv run python -m bench.bench_history --quick    # N=80, 4 s

The baseline is the server as it was before history (git commit `BASELINE`, checked out into a
scratch worktree and run from there with the same interpreter and libraries), started beside
the current one on the same backend; the two are measured in alternation, in the same run, so
the machine's noise touches both. Results: bench/results/history-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_core import BOOK, REPO, RESULTS, call, lesson_text, make_client, write_throughput
from testkit.measure import measure, summary_ms, timed_series
from testkit.processes import ServerProcess, free_port

BASELINE = "5d06633"
"""The last commit before history: the same code without versions."""
LESSON = "content/01-Part/01-Chapter/01-history.md"
VERSIONS = 1000


def worktree(commit: str, into: Path) -> Path:
    """A checkout of `commit` (its `src/` is what the baseline server imports)."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), commit], cwd=REPO, check=True, capture_output=True
    )
    return into


def server(name: str, root: Path, work: Path, src: Path | None) -> ServerProcess:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{root}/{name}.db",
        "PANAVERSITY_STORAGE_ROOT": str(root / f"{name}-store"),
        "PANAVERSITY_LOG_LEVEL": "WARNING",
        # One agent makes every call here; the default per-agent budgets would throttle it.
        "PANAVERSITY_RATE_LIMIT_READS_PER_MINUTE": "0",
        "PANAVERSITY_RATE_LIMIT_WRITES_PER_MINUTE": "0",
    }
    if src is not None:
        env["PYTHONPATH"] = str(src)
    port = free_port()
    argv = [sys.executable, "-m", "panaversity_fs", "serve", "--port", str(port)]
    return ServerProcess.command(name, argv, env, work / f"{name}.log", port)


async def write_series(srv: ServerProcess, n: int, tag: str) -> dict[str, Any]:
    """`n` sequential updates of one 5 KB lesson (after a short warm-up)."""
    async with make_client(srv.url) as client:
        path = f"content/01-Part/02-Chapter/01-{tag}.md"
        chain = {
            "hash": (
                await call(
                    client, "write_content", {"book_id": BOOK, "path": path, "content": lesson_text("w")}
                )
            )["file_hash"]
        }

        def write(i: int) -> Any:
            args = {
                "book_id": BOOK,
                "path": path,
                "content": lesson_text(f"{tag}{i}"),
                "expected_hash": chain["hash"],
            }

            async def op() -> None:
                chain["hash"] = (await call(client, "write_content", args))["file_hash"]

            return op

        async def body() -> tuple[list[float], dict[str, Any]]:
            return await timed_series(20, n, write), {}

        return (await measure(srv, body)).as_dict()


async def version_reads(srv: ServerProcess, n: int) -> dict[str, Any]:
    """A lesson with `VERSIONS` versions: current read, read of an old version, list_versions."""
    async with make_client(srv.url) as client:
        current = None
        started = time.perf_counter()
        for i in range(VERSIONS):
            args = {"book_id": BOOK, "path": LESSON, "content": lesson_text(f"h{i}")}
            if current is not None:
                args["expected_hash"] = current
            current = (await call(client, "write_content", args))["file_hash"]
        filled = time.perf_counter() - started
        out: dict[str, Any] = {"versions": VERSIONS, "fill_s": round(filled, 1)}
        shapes = {
            "read_current": ("read_content", {"book_id": BOOK, "path": LESSON}),
            "read_old_version": ("read_content", {"book_id": BOOK, "path": LESSON, "version": 10}),
            "list_versions_first_page": ("list_versions", {"book_id": BOOK, "path": LESSON}),
            "list_versions_deep_page": ("list_versions", {"book_id": BOOK, "path": LESSON, "limit": 200}),
        }
        for name, (tool, arguments) in shapes.items():

            def one(_i: int, tool: str = tool, arguments: dict[str, Any] = arguments) -> Any:
                async def op() -> None:
                    await call(client, tool, arguments)

                return op

            out[name] = summary_ms(await timed_series(10, n, one))
        return out


def storage_growth(root: Path, name: str) -> dict[str, Any]:
    """Bytes of the version store and of `file_version` per recorded version."""
    store = root / f"{name}-store" / ".pfs" / "versions"
    files = [p for p in store.rglob("*") if p.is_file()]
    with sqlite3.connect(root / f"{name}.db") as db:
        rows = db.execute("SELECT count(*) FROM file_version").fetchone()[0]
        try:
            table = db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('file_version', 'ix_file_version_agent_created',"
                " 'ix_file_version_book_created', 'ix_file_version_sha256', 'sqlite_autoindex_file_version_1')"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            table = None
    stored = sum(p.stat().st_size for p in files)
    return {
        "versions": rows,
        "objects": len(files),
        "object_bytes": stored,
        "object_bytes_per_version": round(stored / rows, 1) if rows else None,
        "db_bytes_per_version": round(table / rows, 1) if table and rows else None,
    }


async def run(quick: bool) -> dict[str, Any]:
    n, seconds, rounds = (80, 4.0, 2) if quick else (300, 10.0, 3)
    work = Path(tempfile.mkdtemp(prefix="pfs-bench-history-"))
    old = worktree(BASELINE, work / "baseline-src")
    results: dict[str, Any] = {"baseline_commit": BASELINE, "n": n, "load_seconds": seconds, "rounds": {}}
    try:
        for r in range(rounds):
            # Fresh servers and backends each round: the load phase creates its lessons.
            servers = {
                "without_history": server(f"without_history_{r}", work, work, old / "src"),
                "with_history": server(f"with_history_{r}", work, work, None),
            }
            order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
            for name, srv in order:
                srv.start()
                try:
                    print(f"  round {r + 1}: {name}")
                    results["rounds"].setdefault(name, []).append(
                        {
                            "write": await write_series(srv, n, f"r{r}"),
                            "throughput": await write_throughput(srv, seconds),
                        }
                    )
                    if name == "with_history" and r == rounds - 1:
                        results["reads_on_1000_versions"] = await version_reads(srv, n)
                        results["storage"] = storage_growth(work, srv.name)
                finally:
                    srv.stop()
        results["ratios"] = ratios(results["rounds"])
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(old)], check=False, cwd=REPO, capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)
    return results


def ratios(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """With / without, on the medians over rounds."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    def pick(name: str, key: str, field: str) -> float:
        return median([r[key][field] for r in rounds[name]])

    return {
        "write_p50": round(
            pick("with_history", "write", "p50_ms") / pick("without_history", "write", "p50_ms"), 3
        ),
        "write_p95": round(
            pick("with_history", "write", "p95_ms") / pick("without_history", "write", "p95_ms"), 3
        ),
        "writes_per_s_8_clients": round(
            pick("with_history", "throughput", "writes_per_s")
            / pick("without_history", "throughput", "writes_per_s"),
            3,
        ),
        "server_cpu_ms_per_write": round(
            pick("with_history", "write", "server_cpu_ms_per_call")
            / pick("without_history", "write", "server_cpu_ms_per_call"),
            3,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.quick))
    out = args.out or RESULTS / f"history-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
