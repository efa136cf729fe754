"""SQLite connections that run each statement on the event loop's thread.

aiosqlite runs every call of a connection on a worker thread: a statement, a cursor, a fetch,
a commit each cost a hand-off to that thread and a wake-up of the event loop to come back
(about forty per write). SQLite answers a point statement in microseconds from the page cache,
and in WAL mode with `synchronous=NORMAL` a COMMIT does not wait for the disk, so the hand-offs
were most of a write's database cost. `InlineConnection` is aiosqlite's connection with the
calls made in place; SQLAlchemy's aiosqlite dialect drives it unchanged (`async_creator`).

Nothing may wait on the loop thread, so these connections never use SQLite's busy handler
(`busy_timeout` 0): a statement refused with SQLITE_BUSY (another process holds the write lock,
or is recovering the WAL) is retried after an asynchronous sleep, for up to the busy timeout the
engine was built with, then fails as SQLite would have. A statement refused with SQLITE_BUSY
took no effect, so retrying it is safe (in WAL mode only `BEGIN IMMEDIATE` and the first read of
a transaction can be refused so).

Write transactions of a file database go further (`InlineWrites`): their statements run on a
synchronous SQLAlchemy connection, still on the loop's thread, behind `AsyncConnection`'s
`execute` (and the write path's statements built once go to `sqlite3` directly,
`driver_writes`). SQLAlchemy's asyncio layer costs a greenlet and its switches per statement,
about half of a statement's CPU here (a four-statement transaction: 416 us through it, 217 us
without). Only `BEGIN IMMEDIATE` can meet a busy file there (the transaction then holds the
write lock; `wal_autocheckpoint` is off, so a COMMIT never checkpoints), and it is retried
asynchronously like the statements above (`begin_immediate`).

The cost of running in place: a long statement (a scan of a large table) holds the loop for its
duration. The server's statements are point lookups and short scans, and a WAL checkpoint runs
on a worker thread (`checkpoint`), not inside a COMMIT.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import Executable
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from panaversity_fs.db.driver_writes import driver_plan, run_inline

_T = TypeVar("_T")

SQLITE_BUSY = 5
"""SQLite's primary result code for a database file locked by another connection."""

FIRST_RETRY = 0.001
LAST_RETRY = 0.05
"""Seconds slept between attempts of a statement refused as busy: doubling from the first to
the last, which then repeats until the busy timeout."""


class _InlineQueue:
    """Stands in for aiosqlite's queue to its worker thread: runs each call as it is queued.

    SQLAlchemy's adapter puts `(future, function)` on the queue itself to change a
    connection's isolation level; aiosqlite does it to connect and to stop.
    """

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to whoever awaits the future, as the thread would
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the calling thread, with busy waits made
    asynchronous (see the module docstring)."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], busy_timeout: float) -> None:
        super().__init__(connector, iter_chunk_size=256)
        self._tx = _InlineQueue()  # pyright: ignore[reportAttributeAccessIssue]
        self._busy_timeout = busy_timeout

    def __await__(self) -> Any:
        # aiosqlite starts its worker thread here; there is none.
        return self._connect().__await__()

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` now; while SQLite answers busy, sleep (without holding the loop) and retry.

        Raises:
            ValueError: the connection is closed.
            sqlite3.Error: what SQLite raised (busy past the busy timeout included).
        """
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return await while_busy(lambda: fn(*args, **kwargs), self._busy_timeout)


class InlineWrites(AsyncConnection):
    """The connection of a SQLite write transaction: `execute` runs each statement at once on a
    synchronous connection on the calling thread (see the module docstring), and so does
    `exec_driver_sql`; the transaction itself belongs to `Database.write`."""

    def __init__(self, async_engine: AsyncEngine, connection: Connection) -> None:
        super().__init__(async_engine, connection)
        self._statements = connection

    async def execute(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        statement: Executable,
        parameters: Any = None,
        *,
        execution_options: Any = None,
    ) -> Result[Any]:
        """Run `statement` now (built-once statements through the driver, `driver_writes`) and
        return its (buffered) result.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database refused or failed.
        """
        plan = driver_plan(statement, parameters, execution_options, self.dialect)
        if plan is not None:
            return run_inline(self._statements, plan, parameters)
        return self._statements.execute(statement, parameters, execution_options=execution_options)

    async def exec_driver_sql(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> CursorResult[Any]:
        """Run SQL text as the driver takes it, now; return its (buffered) result.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database refused or failed.
        """
        return self._statements.exec_driver_sql(statement, parameters, execution_options)


async def begin_immediate(conn: Connection, busy_timeout: float) -> None:
    """Start a write transaction on `conn` (a connection whose busy timeout is 0); while another
    connection holds the write lock, sleep without holding the loop and retry, for up to
    `busy_timeout` seconds.

    Raises:
        sqlalchemy.exc.OperationalError: SQLite refused (still busy after `busy_timeout`).
    """

    def begin() -> None:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except OperationalError:
            conn.rollback()  # SQLAlchemy began its own transaction around the refused statement
            raise

    await while_busy(begin, busy_timeout)


async def while_busy(attempt: Callable[[], _T], busy_timeout: float) -> _T:
    """Return `attempt()`; while SQLite refuses it as busy (directly, or wrapped by SQLAlchemy),
    sleep without holding the loop and try again, for up to `busy_timeout` seconds.

    Raises:
        sqlite3.Error, sqlalchemy.exc.OperationalError: what `attempt` raised last.
    """
    deadline: float | None = None
    pause = FIRST_RETRY
    while True:
        try:
            return attempt()
        except (sqlite3.OperationalError, OperationalError) as exc:
            refusal = exc.orig if isinstance(exc, OperationalError) else exc
            if not isinstance(refusal, sqlite3.OperationalError) or not _busy(refusal):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + busy_timeout
            if now + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, LAST_RETRY)


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == SQLITE_BUSY
    return "database is locked" in str(exc)


def inline_creator(path: str, busy_timeout: float) -> Callable[[], Any]:
    """An `async_creator` for SQLAlchemy: opens `path` as an `InlineConnection`."""

    def connector() -> sqlite3.Connection:
        # check_same_thread off: a connection may be closed by the pool from another thread
        # (a garbage-collected checkout), though it is only used on the loop's thread.
        return sqlite3.connect(path, check_same_thread=False)

    async def create() -> InlineConnection:
        return await InlineConnection(connector, busy_timeout)

    return create


def checkpoint(path: str) -> None:
    """Copy what the WAL holds into the database file (a passive checkpoint: it waits for no
    reader or writer). Blocking: run it on a worker thread.

    Raises:
        sqlite3.Error: SQLite failed.
    """
    conn = sqlite3.connect(path, timeout=0)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()
