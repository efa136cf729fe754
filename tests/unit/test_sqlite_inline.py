"""SQLite statements on the event loop's thread (`db/sqlite_inline.py`): no thread hand-off,
no wait that holds the loop, checkpoints off the loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import CHECKPOINT_EVERY, DB_ERRORS, Database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database.from_settings(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", database_statement_timeout=2.0)
    )
    async with db.write() as tx:
        await tx.conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)"))
    yield db
    await db.dispose()


def _hold_write_lock(path: str, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


async def _ticks_while(awaitable: Any) -> tuple[int, Any]:
    """Run `awaitable`, counting 10 ms ticks of another task meanwhile (a held loop ticks not)."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await awaitable
    finally:
        done.set()
        await task
    return ticks, result


async def test_statements_run_on_the_loop_thread(sqlite_db: Database) -> None:
    threads: set[int] = set()

    def _seen(*_args: Any) -> None:
        threads.add(threading.get_ident())

    for engine in sqlite_db.transaction_engines:
        event.listen(engine, "before_cursor_execute", _seen)

    async with sqlite_db.write() as tx:
        await tx.conn.execute(text("INSERT INTO t (k, v) VALUES (1, x'00')"))
    async with sqlite_db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    assert threads == {threading.get_ident()}


async def test_a_busy_file_is_waited_for_without_holding_the_loop(
    sqlite_db: Database, tmp_path: Path
) -> None:
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(str(tmp_path / "inline.db"), 0.5, locked))
    holder.start()
    assert locked.wait(5)

    async def write() -> float:
        started = time.monotonic()
        async with sqlite_db.write() as tx:
            await tx.conn.execute(text("INSERT INTO t (k, v) VALUES (2, x'00')"))
        return time.monotonic() - started

    ticks, waited = await _ticks_while(write())
    holder.join()
    assert waited >= 0.3  # it did wait for the other connection's lock
    assert ticks >= 15  # and the loop kept running meanwhile (a blocking busy handler: 0-1)
    async with sqlite_db.read() as conn:
        assert (await conn.execute(text("SELECT k FROM t"))).scalars().all() == [2]


async def test_a_file_busy_past_the_timeout_fails_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "short.db"
    db = Database.from_settings(
        Settings(database_url=f"sqlite+aiosqlite:///{path}", database_statement_timeout=0.3)
    )
    try:
        async with db.write() as tx:
            await tx.conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(str(path), 1.5, locked))
        holder.start()
        assert locked.wait(5)
        started = time.monotonic()
        with pytest.raises(DB_ERRORS):
            async with db.write() as tx:
                await tx.conn.execute(text("INSERT INTO t (k) VALUES (1)"))
        assert time.monotonic() - started < 1.2
        holder.join()
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    finally:
        await db.dispose()


async def test_the_wal_is_checkpointed_off_the_loop(sqlite_db: Database, tmp_path: Path) -> None:
    wal = tmp_path / "inline.db-wal"
    payload = os.urandom(4096)
    writes = CHECKPOINT_EVERY * 6
    for k in range(writes):
        async with sqlite_db.write() as tx:
            await tx.conn.execute(text("INSERT INTO t (k, v) VALUES (:k, :v)"), {"k": k + 10, "v": payload})
        await asyncio.sleep(0)  # let a started checkpoint's thread get going
    # Without checkpoints the WAL holds every write (about 3 pages each: 7.7 MB here); checkpointed
    # every CHECKPOINT_EVERY writes it starts over and stays at about that many writes' pages.
    assert wal.stat().st_size < writes * 4096
