"""Write transactions whose built-once statements the driver sends itself (asyncpg on
PostgreSQL, sqlite3 on a SQLite file; `db/driver_writes.py`): the same answers, failures and
listeners as SQLAlchemy's own path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db import audit_sql, journal_sql, publish_sql
from panaversity_fs.db.driver_writes import DriverWrites, built_once
from panaversity_fs.db.engine import Database, WriteTransaction
from panaversity_fs.db.schema import file_journal
from panaversity_fs.db.sqlite_inline import InlineWrites
from tests.conftest import Backends
from tests.support import errors_seen

ROW = {"k_book": "book", "k_path": "content/01-A/01-B/01-c.md", "k_user": "__base__"}


async def seeded_database(backends: Backends, combo: str) -> Database:
    """A database for `combo` holding one pending base row (`ROW`, hash `a...a`, version 1)."""
    db = Database.from_settings(await backends.settings(combo, database_statement_timeout=5.0))
    now = datetime.now(UTC)
    async with db.write() as tx:
        await tx.conn.execute(
            insert(file_journal).values(
                book_id=ROW["k_book"],
                path=ROW["k_path"],
                user_id=ROW["k_user"],
                sha256="a" * 64,
                size=5,
                version=1,
                last_written_at=now,
                storage_backend="fs",
                publish_pending=True,
                staging_key="staged",
                pending_since=now,
            )
        )
    return db


@pytest.fixture
async def sqlite_db(backends: Backends) -> AsyncIterator[Database]:
    db = await seeded_database(backends, "sqlite-fs")
    yield db
    await db.dispose()


@pytest.fixture(params=["postgres-fs", "sqlite-fs"])
async def db(backends: Backends, request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """Each backend's write transactions: asyncpg (`DriverWrites`) and sqlite3 (`InlineWrites`)."""
    seeded = await seeded_database(backends, request.param)
    yield seeded
    await seeded.dispose()


async def _through_sqlalchemy(conn: AsyncConnection, statement: Any, parameters: Any = None) -> Any:
    """`statement` run by SQLAlchemy's own path on a write transaction's connection."""
    if isinstance(conn, InlineWrites):
        return conn._statements.execute(statement, parameters)  # pyright: ignore[reportPrivateUsage]
    return await AsyncConnection.execute(conn, statement, parameters)


async def _publish_and_update(conn: AsyncConnection) -> None:
    """In a write transaction: publish `ROW` (a second publish finds nothing left), then move it to
    hash `b...b` by compare-and-swap; both through the driver."""
    key = journal_sql.FileKey(*ROW.values())
    claim = await publish_sql.finish_publish(conn, key, "staged")
    assert claim is not None and claim.sha256 == "a" * 64
    again = await publish_sql.finish_publish(conn, key, "staged")
    assert again is None  # the flag the driver's UPDATE cleared (a boolean literal bound) is seen
    version = (await conn.execute(journal_sql._CAS_BASE, cas_values("b" * 64))).scalar_one_or_none()
    assert version == 2


def _lock_head(db: Database) -> Any:
    return audit_sql._LOCK_HEAD if db.is_sqlite else audit_sql._LOCK_HEAD_PG


def cas_values(sha256: str) -> dict[str, Any]:
    return ROW | {
        "k_expected": "a" * 64,
        "v_sha256": sha256,
        "v_size": 7,
        "v_staging_key": "staged-2",
        "v_now": datetime.now(UTC),
        "v_content_type": None,
        "v_operation": "update",
        "v_agent_id": "agent",
    }


async def _pid(conn: AsyncConnection) -> int:
    return int((await AsyncConnection.execute(conn, text("SELECT pg_backend_pid()"))).scalar_one())


async def test_built_once_statements_answer_as_through_sqlalchemy(pg_db: Database) -> None:
    """Each kind of answer (a locked row with computed columns, an UPDATE's RETURNING, no row)
    read through the driver equals SQLAlchemy's, keys included; both run in one transaction."""
    async with pg_db.write() as tx:
        assert isinstance(tx.conn, DriverWrites)
        through_driver = (await tx.conn.execute(audit_sql._LOCK_HEAD_PG)).one()
        through_sqlalchemy = (await _through_sqlalchemy(tx.conn, audit_sql._LOCK_HEAD_PG)).one()
        assert tuple(through_driver) == tuple(through_sqlalchemy)
        assert (
            through_driver._fields
            == through_sqlalchemy._fields
            == ("seq", "head_hash", "txid_current_1", "pg_backend_pid_1")
        )
        assert through_driver[2] == through_sqlalchemy[2]  # one transaction
        await _publish_and_update(tx.conn)
    async with pg_db.read() as conn:
        row = (await conn.execute(text("SELECT sha256, version, publish_pending FROM file_journal"))).one()
    assert tuple(row) == ("b" * 64, 2, True)


async def test_a_refused_value_fails_as_through_sqlalchemy_seen_by_listeners_and_writes_nothing(
    db: Database,
) -> None:
    seen = errors_seen(db)
    failures: list[IntegrityError] = []
    refused = cas_values("b" * 64) | {"v_size": None}  # size is NOT NULL
    for through_driver in (False, True):
        with pytest.raises(IntegrityError) as failed:
            async with db.write() as tx:
                if through_driver:
                    await tx.conn.execute(journal_sql._CAS_BASE, refused)
                else:
                    await _through_sqlalchemy(tx.conn, journal_sql._CAS_BASE, refused)
        failures.append(failed.value)
    by_sqlalchemy, by_driver = failures
    assert type(by_driver) is type(by_sqlalchemy)
    assert type(by_driver.orig) is type(by_sqlalchemy.orig)
    assert len(seen) == 2 and seen[0] == seen[1]  # the dialect's DBAPI error, once per path
    async with db.write() as tx:  # the connection is fine, the transaction was rolled back
        version = (await tx.conn.execute(journal_sql._CAS_BASE, cas_values("b" * 64))).scalar_one_or_none()
    assert version == 2


async def cancelled_while_it_waits(
    db: Database,
    transaction: Callable[[], AbstractAsyncContextManager[WriteTransaction]],
    first: Callable[[AsyncConnection], Awaitable[object]] | None = None,
) -> int:
    """Hold the audit chain head on another connection, open `transaction`, run `first` in it,
    then cancel it while its next statement waits for the head; return its backend's pid."""
    pids: list[int] = []
    async with db.engine.connect() as blocker:
        await blocker.execute(text("SELECT 1 FROM audit_chain_head FOR UPDATE"))  # holds the chain head
        started = asyncio.Event()

        async def waits_for_the_head() -> None:
            async with transaction() as tx:
                if first is not None:
                    await first(tx.conn)
                pids.append(await _pid(tx.conn))
                started.set()
                await tx.conn.execute(audit_sql._LOCK_HEAD_PG)

        task = asyncio.create_task(waits_for_the_head())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await blocker.rollback()
    return pids[0]


async def assert_backend_ends(db: Database, pid: int) -> None:
    """Fail unless PostgreSQL's backend `pid` is gone within 5 s."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
    async with db.read() as conn:
        for _ in range(100):
            if (await conn.execute(query, {"pid": pid})).scalar_one() == 0:
                return
            await asyncio.sleep(0.05)
    pytest.fail("the cancelled statement's connection was kept")


async def test_a_statement_cancelled_while_it_waits_discards_its_connection(pg_db: Database) -> None:
    """A statement the driver was running when its caller was cancelled may still run on the
    server: the connection is closed, never handed to the next transaction."""
    pid = await cancelled_while_it_waits(pg_db, pg_db.write)
    async with pg_db.write() as tx:
        assert await _pid(tx.conn) != pid
        await tx.conn.execute(audit_sql._LOCK_HEAD_PG)  # the head is free again: nothing holds it
    await assert_backend_ends(pg_db, pid)


async def test_a_fault_a_listener_raises_before_a_driver_statement_fails_the_transaction(
    db: Database,
) -> None:
    """`before_cursor_execute` listeners (the fault sweep's injection point) see driver statements."""
    statements: list[str] = []

    def refuse(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement.split()[0])
        if statement.startswith("UPDATE file_journal"):
            raise OperationalError(statement, None, RuntimeError("injected"))

    for engine in db.transaction_engines:
        event.listen(engine, "before_cursor_execute", refuse)
    try:
        with pytest.raises(OperationalError, match="injected"):
            async with db.write() as tx:
                await tx.conn.execute(_lock_head(db))
                await tx.conn.execute(audit_sql._MOVE_HEAD, {"new_seq": 99, "new_hash": "f" * 64})
                await tx.conn.execute(journal_sql._CAS_BASE, cas_values("b" * 64))
    finally:
        for engine in db.transaction_engines:
            event.remove(engine, "before_cursor_execute", refuse)
    assert statements[-3:] == ["SELECT", "UPDATE", "UPDATE"]
    async with db.read() as conn:
        row = (await conn.execute(text("SELECT sha256, version FROM file_journal"))).one()
        head = (await conn.execute(select(audit_sql.audit_chain_head.c.seq))).scalar_one()
    assert tuple(row) == ("a" * 64, 1)
    assert head != 99  # the head move before the fault was rolled back with it


async def test_a_publish_alone_commits_without_waiting_for_its_wal_flush(pg_db: Database) -> None:
    """The publish transaction sets `synchronous_commit` off for itself (losing it in a database
    crash leaves the row pending with the bytes in place, which readers and recovery accept);
    the next transaction on the connection, a write's, waits for its flush again."""

    async def setting(conn: AsyncConnection) -> str:
        query = text("SELECT current_setting('synchronous_commit')")
        return str((await AsyncConnection.execute(conn, query)).scalar_one())

    async with pg_db.write() as tx:
        assert await setting(tx.conn) == "on"
        claim = await publish_sql.finish_publish(tx.conn, journal_sql.FileKey(*ROW.values()), "staged")
        assert claim is not None
        assert await setting(tx.conn) == "off"
    async with pg_db.write() as tx:
        assert await setting(tx.conn) == "on"


# -- SQLite: the same statements sent by sqlite3 inside an `InlineWrites` transaction --------


def _entry(seq: int, prev: str) -> dict[str, Any]:
    entry = {column.name: None for column in audit_sql.audit_log.columns} | {
        "seq": seq,
        "created_at": datetime.now(UTC),
        "agent_id": "agent",
        "operation": "write_content",
        "book_id": "book",
        "path": ROW["k_path"],
        "user_id": "__base__",
        "status": "success",
        "chain_prev_hash": prev,
        "entry_hash": f"{seq:064x}",
    }
    return {f"e_{name}": value for name, value in entry.items()}


async def test_sqlite_built_once_statements_answer_as_through_sqlalchemy(sqlite_db: Database) -> None:
    """The chain head, an entry inserted and the head moved, a publish, a compare-and-swap: the
    driver's answers (keys included) equal SQLAlchemy's, in the one write transaction."""
    async with sqlite_db.write() as tx:
        assert isinstance(tx.conn, InlineWrites)
        head = (await tx.conn.execute(audit_sql._LOCK_HEAD)).one()
        assert tuple(head) == tuple((await _through_sqlalchemy(tx.conn, audit_sql._LOCK_HEAD)).one())
        assert head._fields == ("seq", "head_hash")
        await tx.conn.execute(audit_sql._INSERT_ONE, _entry(head[0] + 1, head[1]))
        await tx.conn.execute(
            audit_sql._MOVE_HEAD, {"new_seq": head[0] + 1, "new_hash": f"{head[0] + 1:064x}"}
        )
        moved = (await _through_sqlalchemy(tx.conn, audit_sql._LOCK_HEAD)).one()
        assert tuple(moved) == (head[0] + 1, f"{head[0] + 1:064x}")
        await _publish_and_update(tx.conn)
    async with sqlite_db.read() as conn:
        row = (await conn.execute(text("SELECT sha256, version, publish_pending FROM file_journal"))).one()
        entry = (await conn.execute(text("SELECT seq, created_at FROM audit_log ORDER BY seq DESC"))).first()
    assert tuple(row) == ("b" * 64, 2, 1)
    assert entry is not None and entry[0] == head[0] + 1
    assert str(entry[1]).count(":") == 2  # a date bound as SQLAlchemy stores it (its bind processor)


async def test_sqlite_dates_a_built_once_statement_returns_are_converted_as_sqlalchemy_converts_them(
    sqlite_db: Database,
) -> None:
    """SQLite stores a date as text, which SQLAlchemy turns back into a datetime: so does the
    driver's path, in a write transaction and in a point read."""
    returns_a_date = built_once(select(journal_sql.J.last_written_at).where(journal_sql.BY_KEY))
    async with sqlite_db.write() as tx:
        through_driver = (await tx.conn.execute(returns_a_date, ROW)).scalar_one()
        through_sqlalchemy = (await _through_sqlalchemy(tx.conn, returns_a_date, ROW)).scalar_one()
    assert isinstance(through_driver, datetime)
    assert through_driver == through_sqlalchemy
    contexts: list[object] = []

    def note(_conn: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool) -> None:
        contexts.append(context)

    point_reads = sqlite_db.point_read_engine
    assert point_reads is not None
    event.listen(point_reads, "before_cursor_execute", note)
    try:
        (point_read,) = await sqlite_db.select_once(returns_a_date, ROW)
    finally:
        event.remove(point_reads, "before_cursor_execute", note)
    assert point_read[0] == through_driver
    assert contexts == [None]  # sent by the driver: SQLAlchemy's own path has an execution context
    rows = await journal_sql.look_up(sqlite_db, ROW["k_book"], ROW["k_path"], ["someone", "__base__"])
    assert list(rows) == ["__base__"] and rows["__base__"].last_written_at.tzinfo is not None
