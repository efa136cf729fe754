"""Audit verification benchmark (A-5): `panaversity-fs audit verify` over a 1,000,000-entry chain.

    uv run python -m bench.bench_audit                  # 1,000,000 entries on PostgreSQL
    uv run python -m bench.bench_audit --entries 200000 --backend sqlite

A scratch database (`pfs_bench_audit_<pid>` on `PFS_BENCH_PG_URL`, dropped afterwards, or a
temporary SQLite file) is migrated and filled with a synthetic, correctly linked chain
(`testkit/chains.py`). Then, in the same run:

- **verify**: the CLI in a fresh process, wall time and peak RSS (`ru_maxrss`);
- **baseline, fetch**: the same rows streamed in seq order with plain asyncpg (a server-side
  cursor), no hashing: what reading the chain costs at all;
- **baseline, hash**: the canonical JSON + sha256 of every entry in a loop over rows already
  in memory (a 100,000-row sample, scaled): what hashing costs at all.

Target (specs/test-catalogue.md A-5): 1,000,000 entries in under 60 s, RSS under 200 MB.
Results: a table and bench/results/audit-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench.bench_core import RESULTS
from panaversity_fs.audit.chain import compute_entry_hash
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import upgrade
from testkit.chains import synthetic_entries, verify_and_measure, write_chain
from testkit.databases import create_pg_database, drop_pg_database
from testkit.measure import machine_info

TARGET_SECONDS = 60.0
TARGET_RSS = 200 * 1024 * 1024


async def fetch_baseline(url: str) -> float:
    """Seconds to stream every audit row in seq order through a server-side cursor."""
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            async for _ in conn.cursor("SELECT * FROM audit_log ORDER BY seq", prefetch=2000):
                pass
        return time.perf_counter() - started
    finally:
        await conn.close()


def hash_baseline(entries: int, sample: int = 100_000) -> float:
    """Seconds to hash `entries` entries, scaled from a timed sample held in memory."""
    rows = list(synthetic_entries(min(sample, entries)))
    started = time.perf_counter()
    for row in rows:
        compute_entry_hash(row)
    return (time.perf_counter() - started) * entries / len(rows)


async def run(entries: int, backend: str) -> dict[str, Any]:
    scratch = tempfile.mkdtemp(prefix="pfs-bench-audit-")
    name = f"pfs_bench_audit_{os.getpid()}"
    url = (
        await create_pg_database(name)
        if backend == "postgres"
        else f"sqlite+aiosqlite:///{Path(scratch) / 'audit.db'}"
    )
    try:
        settings = Settings(database_url=url, storage_root=Path(scratch) / "store")
        db = Database.from_settings(settings)
        try:
            await upgrade(db)
            started = time.perf_counter()
            await write_chain(db, entries, batch=50_000)
            filled = time.perf_counter() - started
        finally:
            await db.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PANAVERSITY_", "DATABASE_"))}
        env |= {"DATABASE_URL": url, "PANAVERSITY_STORAGE_ROOT": str(Path(scratch) / "store")}
        report, seconds, max_rss = verify_and_measure(env)
        fetch = await fetch_baseline(url) if backend == "postgres" else None
        hashing = hash_baseline(entries)
    finally:
        if backend == "postgres":
            await drop_pg_database(name)
    return {
        "backend": backend,
        "entries": entries,
        "fill_seconds": round(filled, 1),
        "verify_ok": report["ok"],
        "verify_seconds": round(seconds, 2),
        "verify_entries_per_second": round(entries / seconds),
        "verify_peak_rss_mib": round(max_rss / 2**20, 1),
        "baseline_fetch_seconds": round(fetch, 2) if fetch is not None else None,
        "baseline_hash_seconds": round(hashing, 2),
        "verify_over_fetch_plus_hash": round(seconds / ((fetch or 0) + hashing), 2),
        "target_met": seconds < TARGET_SECONDS and max_rss < TARGET_RSS and report["ok"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--json", type=Path, help="write the results here (default bench/results/audit-*.json)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.entries, args.backend))
    result["machine"] = machine_info()
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in result.items():
        if key != "machine":
            print(f"{key:32} {value}")
    out = args.json or RESULTS / f"audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}", file=sys.stderr)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
