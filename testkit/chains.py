"""Large synthetic audit chains, written straight into a migrated database (for A-5).

Entries are hashed with the real `compute_entry_hash` and linked exactly as appends link them;
PostgreSQL gets them through COPY, SQLite through batched inserts, and the chain head is set to
the last entry, so `audit verify` sees a chain the server could have written.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import insert, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from panaversity_fs.audit.chain import GENESIS_HASH, compute_entry_hash
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import GLOBAL_CHAIN, audit_chain_head, audit_log

COLUMNS = [column.name for column in audit_log.columns]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_entries(count: int, start: int = 1, prev: str = GENESIS_HASH) -> Iterator[dict[str, Any]]:
    """`count` linked entries from seq `start`, varied like real traffic (reads, writes, refusals)."""
    for seq in range(start, start + count):
        n = seq % 97
        entry: dict[str, Any] = {
            "seq": seq,
            "created_at": T0 + timedelta(milliseconds=seq),
            "agent_id": f"lesson-writer-{n % 8}",
            "operation": ("read_content", "write_content", "delete_content")[n % 3],
            "book_id": f"book-{n % 5}",
            "path": f"content/{n % 9:02d}-Part/{n % 7:02d}-Chapter/{n:02d}-lesson.md",
            "user_id": "__base__" if n % 4 else f"student-{n % 11}",
            "prev_hash": None if n % 5 == 0 else f"{seq:064x}",
            "new_hash": f"{seq + 1:064x}",
            "status": ("success", "success", "refused")[n % 3],
            "error_code": "CONFLICT" if n % 3 == 2 else None,
            "error_message": "expected_hash is not the file's current hash" if n % 3 == 2 else None,
            "execution_time_ms": n,
            "request_id": f"{seq:x}",
            "chain_prev_hash": prev,
        }
        entry["entry_hash"] = prev = compute_entry_hash(entry)
        yield entry


async def write_chain(db: Database, count: int, batch: int = 20_000) -> tuple[int, str]:
    """Write a `count`-entry chain into an empty audit log; return the head `(seq, hash)`."""
    head = (0, GENESIS_HASH)
    url = db.engine.url
    if db.is_sqlite:
        rows: list[dict[str, Any]] = []
        for entry in synthetic_entries(count):
            rows.append(entry)
            if len(rows) >= batch:
                head = await _insert(db, rows)
                rows = []
        if rows:
            head = await _insert(db, rows)
    else:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            records: list[tuple[Any, ...]] = []
            for entry in synthetic_entries(count):
                records.append(tuple(entry[name] for name in COLUMNS))
                if len(records) >= batch:
                    await conn.copy_records_to_table("audit_log", records=records, columns=COLUMNS)
                    records = []
                head = (entry["seq"], entry["entry_hash"])
            if records:
                await conn.copy_records_to_table("audit_log", records=records, columns=COLUMNS)
        finally:
            await conn.close()
    async with db.write() as tx:
        conn = tx.conn
        await conn.execute(
            update(audit_chain_head)
            .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
            .values(seq=head[0], head_hash=head[1])
        )
    return head


async def _insert(db: Database, rows: list[dict[str, Any]]) -> tuple[int, str]:
    async with db.write() as tx:
        conn = tx.conn
        await conn.execute(insert(audit_log), rows)
    await asyncio.sleep(0)
    return rows[-1]["seq"], rows[-1]["entry_hash"]


@asynccontextmanager
async def committed_tampering(db: Database) -> AsyncIterator[AsyncConnection]:
    """A committed transaction with the append-only triggers off, as an attacker with database
    access would make. It is a `db.write()` (BEGIN IMMEDIATE on SQLite), so it waits for a
    server's read-audit batcher. SQLite's triggers are dropped for good; PostgreSQL's are
    disabled inside the transaction and enabled again before it commits."""
    async with db.write() as tx:
        conn = tx.conn
        if db.is_sqlite:
            await conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
            await conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_delete")
        else:
            await conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        yield conn
        if not db.is_sqlite:
            await conn.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def commit_tampering(db: Database, *statements: Executable) -> None:
    """Run `statements` in one `committed_tampering` transaction."""
    async with committed_tampering(db) as conn:
        for statement in statements:
            await conn.execute(statement)


# The peak is VmHWM (this process's own high-water mark): `ru_maxrss` survives execve, so in a
# child of a large pytest process it would report the parent's size.
VERIFY_AND_MEASURE = """
import json, sys, time
from panaversity_fs.ops.cli import main
started = time.perf_counter()
status = main(["audit", "verify", "--no-checkpoints"])
elapsed = time.perf_counter() - started
sys.stdout.flush()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": status, "seconds": elapsed, "max_rss": int(hwm.split()[1]) * 1024}))
"""


def verify_and_measure(env: dict[str, str]) -> tuple[dict[str, Any], float, int]:
    """Run `panaversity-fs audit verify` in a fresh process; return its report, seconds, peak RSS."""
    result = subprocess.run(
        [sys.executable, "-c", VERIFY_AND_MEASURE],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 2, result.stdout + result.stderr
    report, measured = json.loads(lines[-2]), json.loads(lines[-1])
    return report, float(measured["seconds"]), int(measured["max_rss"])
