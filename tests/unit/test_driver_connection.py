"""Transactions the driver begins and commits itself on PostgreSQL (`driver_writes.driver_connection`,
`Database.driver_write` / `driver_autocommit`): committed on leaving, rolled back on an exception,
SQLAlchemy's listeners and failure handling as in `Database.write`, and the connection handed back
sound or discarded, never half in a transaction."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db import audit_sql, journal_sql, publish_sql
from panaversity_fs.db.engine import Database
from panaversity_fs.db.sqlite_inline import InlineWrites
from tests.conftest import Backends
from tests.support import errors_seen
from tests.unit.test_driver_writes import (
    ROW,
    assert_backend_ends,
    cancelled_while_it_waits,
    cas_values,
    seeded_database,
)

HEAD = audit_sql._LOCK_HEAD_PG  # pyright: ignore[reportPrivateUsage]
"""A built-once statement answering (seq, head hash, txid, backend pid)."""
CAS = journal_sql._CAS_BASE  # pyright: ignore[reportPrivateUsage]


async def _row(pg_db: Database) -> tuple[str, int, bool]:
    async with pg_db.read() as conn:
        row = (await conn.execute(text("SELECT sha256, version, publish_pending FROM file_journal"))).one()
    return (str(row[0]), int(row[1]), bool(row[2]))


async def _pid(pg_db: Database) -> int:
    async with pg_db.driver_write() as tx:
        return int((await tx.conn.execute(HEAD)).one()[3])


def assert_only_held_checked_out(pg_db: Database) -> None:
    """Every connection out of the pool is one held for the next call (`db.held`), in no
    transaction."""
    assert pg_db.engine.pool.checkedout() == len(pg_db.held_connections)  # pyright: ignore[reportAttributeAccessIssue]
    assert not any(held.driver_connection.is_in_transaction() for held in pg_db.held_connections)  # pyright: ignore[reportOptionalMemberAccess]


def _listen(pg_db: Database, name: str, fn: Any) -> None:
    for engine in pg_db.transaction_engines:
        event.listen(engine, name, fn)


async def test_a_driver_write_is_one_transaction_committed_on_leaving_seen_by_listeners(
    pg_db: Database,
) -> None:
    statements: list[str] = []
    commits: list[object] = []
    _listen(pg_db, "before_cursor_execute", lambda _c, _cu, sql, *_rest: statements.append(sql.split()[0]))
    _listen(pg_db, "commit", commits.append)
    async with pg_db.driver_write() as tx:
        first = (await tx.conn.execute(HEAD)).one()
        claim = await publish_sql.finish_publish(tx.conn, journal_sql.FileKey(*ROW.values()), "staged")
        assert claim is not None
        assert (await tx.conn.execute(CAS, cas_values("b" * 64))).scalar_one() == 2
        assert (await tx.conn.execute(HEAD)).one()[2] == first[2]  # one transaction
        assert commits == []
    assert statements == ["SELECT", "WITH", "UPDATE", "SELECT"]  # the claim also drops a staged copy
    assert len(commits) == 1
    assert await _row(pg_db) == ("b" * 64, 2, True)
    assert_only_held_checked_out(pg_db)


async def test_after_commit_actions_run_only_once_committed(pg_db: Database) -> None:
    done: list[str] = []
    async with pg_db.driver_write() as tx:
        tx.after_commit(lambda: done.append("committed"))
        await tx.conn.execute(CAS, cas_values("b" * 64))
        assert done == []
    assert done == ["committed"]
    with pytest.raises(RuntimeError):
        async with pg_db.driver_write() as tx:
            tx.after_commit(lambda: done.append("rolled back"))
            await tx.conn.execute(HEAD)
            raise RuntimeError("the body failed")
    assert done == ["committed"]


async def test_an_exception_in_the_body_rolls_back_and_keeps_the_connection(
    pg_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure between statements (a storage move, say) rolls the transaction back; the
    connection goes back to the pool sound and the next transaction gets it."""
    pid = await _pid(pg_db)
    with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError, match="storage failed"):
        async with pg_db.driver_write() as tx:
            await tx.conn.execute(CAS, cas_values("b" * 64))
            raise RuntimeError("storage failed")
    assert await _row(pg_db) == ("a" * 64, 1, True)
    assert await _pid(pg_db) == pid
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert_only_held_checked_out(pg_db)


async def test_a_refused_statement_fails_as_through_sqlalchemy_and_discards_the_connection(
    pg_db: Database,
) -> None:
    seen = errors_seen(pg_db)
    refused = cas_values("b" * 64) | {"v_size": None}  # size is NOT NULL
    with pytest.raises(IntegrityError) as through_write:
        async with pg_db.write() as tx:
            await tx.conn.execute(CAS, refused)
    pid = await _pid(pg_db)
    with pytest.raises(IntegrityError) as through_driver:
        async with pg_db.driver_write() as tx:
            assert int((await tx.conn.execute(HEAD)).one()[3]) == pid
            await tx.conn.execute(CAS, refused)
    assert type(through_driver.value.orig) is type(through_write.value.orig)
    assert len(seen) == 2 and seen[0] == seen[1]
    # Rolling back would take a call SQLAlchemy makes only in a greenlet: the server ends it.
    assert await _pid(pg_db) != pid
    assert await _row(pg_db) == ("a" * 64, 1, True)
    async with pg_db.driver_write() as tx:  # the pool is sound
        assert (await tx.conn.execute(CAS, cas_values("b" * 64))).scalar_one() == 2


async def test_a_commit_listener_that_raises_commits_nothing(pg_db: Database) -> None:
    """The fault sweep injects at COMMIT through the `commit` event, as for `Database.write`."""
    armed = {"left": 1}

    def refuse(_conn: Any) -> None:
        if armed["left"]:
            armed["left"] = 0
            raise OperationalError("COMMIT", None, RuntimeError("injected"))

    _listen(pg_db, "commit", refuse)
    with pytest.raises(OperationalError, match="injected"):
        async with pg_db.driver_write() as tx:
            await tx.conn.execute(CAS, cas_values("b" * 64))
    assert await _row(pg_db) == ("a" * 64, 1, True)
    async with pg_db.driver_write() as tx:
        assert (await tx.conn.execute(CAS, cas_values("b" * 64))).scalar_one() == 2
    assert await _row(pg_db) == ("b" * 64, 2, True)


async def test_a_cancelled_driver_write_rolls_back_and_its_waiting_statement_loses_its_connection(
    pg_db: Database,
) -> None:
    """Cancelled between statements: rolled back, connection kept. Cancelled while a statement
    waits on a lock: the statement may still run on the server, so its connection is closed."""
    pid = await _pid(pg_db)
    between = asyncio.Event()

    async def holds_between() -> None:
        async with pg_db.driver_write() as tx:
            await tx.conn.execute(CAS, cas_values("b" * 64))
            between.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(holds_between())
    await between.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _row(pg_db) == ("a" * 64, 1, True)
    assert await _pid(pg_db) == pid

    async def swap_first(conn: AsyncConnection) -> None:
        await conn.execute(CAS, cas_values("c" * 64))

    waiting = await cancelled_while_it_waits(pg_db, pg_db.driver_write, swap_first)
    assert await _row(pg_db) == ("a" * 64, 1, True)
    await assert_backend_ends(pg_db, waiting)


async def test_a_statement_not_built_once_is_refused(pg_db: Database) -> None:
    with pytest.raises(AssertionError, match="built once"):
        async with pg_db.driver_write() as tx:
            await tx.conn.execute(CAS, cas_values("b" * 64))
            await tx.conn.execute(text("SELECT 1"))
    assert await _row(pg_db) == ("a" * 64, 1, True)


async def test_driver_autocommit_statements_are_each_their_own_transaction(pg_db: Database) -> None:
    commits: list[object] = []
    _listen(pg_db, "commit", commits.append)
    with pytest.raises(RuntimeError):
        async with pg_db.driver_autocommit() as conn:
            first = (await conn.execute(HEAD)).one()
            assert (await conn.execute(CAS, cas_values("b" * 64))).scalar_one() == 2
            assert (await conn.execute(HEAD)).one()[2] != first[2]
            raise RuntimeError("after the statements")
    assert await _row(pg_db) == ("b" * 64, 2, True)  # committed by the statement itself
    assert commits == []


async def test_sqlite_driver_write_is_its_write(backends: Backends) -> None:
    db = await seeded_database(backends, "sqlite-fs")
    try:
        async with db.driver_write() as tx:
            assert isinstance(tx.conn, InlineWrites)
            claim = await publish_sql.finish_publish(tx.conn, journal_sql.FileKey(*ROW.values()), "staged")
            assert claim is not None
        assert await _row(db) == ("a" * 64, 1, False)
    finally:
        await db.dispose()
