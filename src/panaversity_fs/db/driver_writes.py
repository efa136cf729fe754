"""Write transactions (and SQLite's point reads) whose hot statements the driver sends itself.

Through SQLAlchemy's asyncio layer a statement costs about 0.1 ms of client CPU more than
asyncpg's own `fetch` of the same SQL (a greenlet and its switches, an execution context, a
cursor adapter, a result built from a cursor description): a four-statement transaction, 2,000
in process, 850 us through the layer, 480 us with the statements sent by the driver inside a
transaction the layer begins and commits. A write makes four such statements. On SQLite, whose
write transactions already run on a synchronous connection (`sqlite_inline.InlineWrites`),
SQLAlchemy's execution still costs about 20 us a statement over `sqlite3`'s own (a
compare-and-swap UPDATE: 31 us against 11 us), and a write makes six.

The statements of the write path are built once at import (`built_once`). Inside a write
transaction (`DriverWrites` on PostgreSQL, `run_inline` from `InlineWrites` on SQLite), and in
SQLite's point reads (`Database.select_once`: a read's look-up), such a statement is compiled
once for the dialect and sent by the driver (asyncpg prepares it once per connection), its
answer converted as SQLAlchemy converts it (a date SQLite stores as text); every other statement
takes SQLAlchemy's usual path on the same connection and transaction. The transaction itself
(BEGIN, COMMIT, rollback, the pool's reset) stays SQLAlchemy's, and so does what follows a
failure: a statement's error reaches SQLAlchemy's own handling (its exception types,
`handle_error` listeners, a lost or cancelled connection invalidated), and
`before_cursor_execute` listeners see every statement, as they would on the usual path.

A transaction made only of such statements (a publish) need not be SQLAlchemy's at all:
`driver_connection` lets the driver begin it with the first statement and commit it, and
SQLAlchemy only checks the connection out and in, dispatches `commit` to its listeners and
handles a failure as above; the same connection on an autocommit engine runs a statement that
is a transaction of its own (an update's one-statement commit).

This leans on parts of SQLAlchemy that are not public API (the compiled statement's bind
processors and result columns, the asyncpg adapter's transaction and error translation, the
connection's error handling); uv.lock pins the version, `tests/unit/test_driver_writes.py`
compares answers, failures and listeners with SQLAlchemy's own path, and
`tests/unit/test_driver_connection.py` checks commit, rollback and the connections handed back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Executable
from sqlalchemy.engine import Connection, Dialect, IteratorResult, Result
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from panaversity_fs.db.held import HeldConnections

logger = logging.getLogger(__name__)

_S = TypeVar("_S", bound=Executable)

_BUILT_ONCE: dict[int, Executable] = {}
"""Statements marked by `built_once`, by identity (kept alive here: ids are never reused)."""

_PLANS: dict[tuple[int, str], _Plan] = {}


def built_once(statement: _S) -> _S:
    """Mark `statement` (a module-level statement with bound parameters only, never rebuilt) as
    one the driver may send itself (in a write transaction, or a SQLite point read); return it
    unchanged."""
    _BUILT_ONCE[id(statement)] = statement
    return statement


@dataclass(frozen=True, slots=True)
class _Plan:
    """A built-once statement compiled for one dialect: its SQL and how to bind it."""

    sql: str
    names: tuple[str, ...]
    """The parameters in `$n` order."""
    fixed: Mapping[str, Any]
    """Values the statement carries itself (literals it compares or sets)."""
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    keys: tuple[str, ...]
    """The names of the columns it returns, as SQLAlchemy names them."""
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    """How SQLAlchemy turns a returned column's value into its type (a date SQLite stores as
    text, for one), by column index."""

    @classmethod
    def compile(cls, statement: Any, dialect: Dialect) -> _Plan:
        compiled: Any = statement.compile(dialect=dialect)
        assert not any(bind.expanding for bind in compiled.binds.values()), "no expanding parameters"
        names: tuple[str, ...] = tuple(compiled.positiontup or ())
        given = compiled.construct_params(_check=False)
        required = {bind.key for bind in compiled.binds.values() if bind.required}
        fixed: dict[str, Any] = {name: given[name] for name in names if name not in required}
        processors: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (index, compiled._bind_processors[name])
            for index, name in enumerate(names)
            if name in compiled._bind_processors
        )
        keys = tuple(str(column.keyname) for column in compiled._result_columns)
        converters = tuple(
            (index, convert)
            for index, column in enumerate(compiled._result_columns)
            if (convert := column.type._cached_result_processor(dialect, None)) is not None
        )
        return cls(compiled.string, names, fixed, processors, keys, converters)

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for `parameters`.

        Raises:
            KeyError: a parameter the statement needs is missing.
        """
        values = [parameters[name] if name in parameters else self.fixed[name] for name in self.names]
        for index, process in self.processors:
            values[index] = process(values[index])
        return values

    def result(self, records: Iterable[Sequence[Any]]) -> Result[Any]:
        """The statement's result from the rows the driver returned, converted as SQLAlchemy
        would convert them."""
        rows = [tuple(record) for record in records]
        if self.converters:
            for number, row in enumerate(rows):
                values = list(row)
                for index, convert in self.converters:
                    values[index] = convert(values[index])
                rows[number] = tuple(values)
        return IteratorResult(SimpleResultMetaData(self.keys), iter(rows))


def driver_plan(
    statement: Executable, parameters: Any, execution_options: Any, dialect: Dialect
) -> _Plan | None:
    """How the driver sends `statement` with `parameters` itself, or None when SQLAlchemy must
    (a statement not built once, execution options, or many parameter sets)."""
    if execution_options is not None or id(statement) not in _BUILT_ONCE:
        return None
    given: object = parameters
    if given is not None and not isinstance(given, dict):
        return None
    key = (id(statement), dialect.name)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _Plan.compile(statement, dialect)
    return plan


def run_inline(sync: Connection, plan: _Plan, parameters: Mapping[str, Any] | None) -> Result[Any]:
    """Run `plan` with `parameters` on the synchronous connection `sync` (SQLite) through its
    DBAPI connection, in whatever transaction `sync` is in (none for a point read); return its
    (buffered) result.

    Raises:
        KeyError: a parameter the statement needs is missing.
        sqlalchemy.exc.SQLAlchemyError: the database refused or failed.
    """
    arguments = plan.arguments(parameters or {})
    conn: Any = sync
    cursor: Any = None
    try:
        if conn._has_events or conn.engine._has_events:
            conn.dispatch.before_cursor_execute(conn, None, plan.sql, arguments, None, False)
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(plan.sql, arguments)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    except BaseException as error:
        conn._handle_dbapi_exception(error, plan.sql, arguments, cursor, None)
        raise AssertionError("unreachable") from error  # pragma: no cover
    finally:
        if cursor is not None:
            cursor.close()
    return plan.result(rows)


class DriverWrites(AsyncConnection):
    """The connection of a PostgreSQL write transaction: built-once statements are sent by the
    driver (see the module docstring), everything else as usual; the transaction belongs to
    `Database.write` (or, for `driver_connection`, to the driver)."""

    def __init__(self, engine: AsyncEngine, sync: Connection | None, driver_only: bool = False) -> None:
        super().__init__(engine, sync)
        self._driver_only = driver_only

    async def execute(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        statement: Executable,
        parameters: Any = None,
        *,
        execution_options: Any = None,
        cancel_after: float | None = None,
    ) -> Result[Any]:
        """Run `statement` in this transaction and return its (buffered) result; `cancel_after`
        (seconds before the driver cancels it) only for a statement built once.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database refused or failed.
        """
        plan = driver_plan(statement, parameters, execution_options, self.dialect)
        if plan is None:
            assert not self._driver_only, "a driver_connection runs statements built once only"
            assert cancel_after is None, "a cancel_after only for statements the driver sends"
            return await super().execute(statement, parameters, execution_options=execution_options)
        return plan.result(await self._fetch(plan.sql, plan.arguments(parameters or {}), cancel_after))

    async def _fetch(self, sql: str, arguments: list[Any], cancel_after: float | None = None) -> list[Any]:
        sync: Any = self.sync_connection
        pooled = sync.connection
        adapter: Any = pooled.dbapi_connection
        try:
            if sync._has_events or sync.engine._has_events:
                sync.dispatch.before_cursor_execute(sync, None, sql, arguments, None, False)
            if adapter._transaction is None:  # SQLAlchemy's adapter begins on first use
                await adapter._start_transaction()
            records = await pooled.driver_connection.fetch(sql, *arguments, timeout=cancel_after)
        except BaseException as error:
            if self._driver_only and adapter._transaction is not None:
                # SQLAlchemy, not in a transaction of its own, would roll this one back with a
                # call only a greenlet may make: the connection is discarded instead, which ends
                # the transaction in the server.
                sync.invalidate(error)
            _fail(self, adapter, error, sql, arguments)
        return records

    async def _commit_by_driver(self) -> None:
        """Commit what this connection's statements began (nothing in autocommit), as
        SQLAlchemy would: its `commit` listeners first, a failure through its handling.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: COMMIT failed (whether it happened is unknown if
                the connection was lost).
        """
        sync: Any = self.sync_connection
        adapter: Any = sync.connection.dbapi_connection
        if adapter._transaction is None:
            return
        if sync.dispatch.commit:  # listeners may make calls only a greenlet may make, as in SQLAlchemy
            await greenlet_spawn(sync.dispatch.commit, sync)
        try:
            await adapter._call_and_discard(adapter._transaction.commit)
        except BaseException as error:
            _fail(self, adapter, error, "COMMIT", [])

    async def _roll_back_by_driver(self) -> None:
        """Roll back what this connection's statements began, discarding the connection if that
        fails (the server then ends the transaction). Raises only a cancellation."""
        sync: Any = self.sync_connection
        if sync.invalidated:
            return
        adapter: Any = sync.connection.dbapi_connection
        if adapter._transaction is None:
            return
        try:
            if sync.dispatch.rollback:
                await greenlet_spawn(sync.dispatch.rollback, sync)
            await adapter._call_and_discard(adapter._transaction.rollback)
        except BaseException as error:
            sync.invalidate(error)
            if not isinstance(error, Exception):
                raise
            logger.debug("rolling back a failed driver transaction failed", exc_info=True)


@asynccontextmanager
async def driver_connection(
    engine: AsyncEngine, held: HeldConnections[Connection] | None = None
) -> AsyncGenerator[DriverWrites, None]:
    """A pooled PostgreSQL connection for statements built once only, which the driver sends
    and, on leaving, commits (or, on an exception, rolls back): a write transaction begun by
    the first statement, or on an autocommit `engine` statements each its own transaction.

    SQLAlchemy only checks the connection out and in, and its listeners (`commit` included)
    and failure handling apply as in `Database.write`: its asyncio layer cost a one-statement
    transaction about 240 us of CPU here (725 against 485 us, 2,000 in process). With `held`,
    the connection is one held there, else checked out; after a commit it is held there
    again instead of checked in (`db.held`); after a failure it goes back to the pool, and so
    does every held connection.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: a statement or COMMIT failed, or no connection could be
            had.
    """
    sync = held.take() if held is not None else None
    if sync is None:
        sync = await greenlet_spawn(engine.sync_engine.connect)
    conn = DriverWrites(engine, sync, driver_only=True)
    committed = False
    try:
        try:
            yield conn
            await conn._commit_by_driver()  # pyright: ignore[reportPrivateUsage]
            committed = True
        except BaseException:
            await conn._roll_back_by_driver()  # pyright: ignore[reportPrivateUsage]
            raise
    finally:
        if held is not None and committed and not sync.invalidated:
            held.give_back(sync)
        else:
            sync.close()
            if held is not None:
                held.failed()


def _fail(
    conn: AsyncConnection, adapter: Any, error: BaseException, sql: str, arguments: list[Any]
) -> NoReturn:
    """Hand a failed statement to SQLAlchemy's own handling: the driver's error becomes the
    dialect's DBAPI error, then SQLAlchemy's (`DBAPIError`, `IntegrityError`, ...), listeners of
    `handle_error` see it, and a lost or cancelled connection is invalidated.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, BaseException: always.
    """
    sync: Any = conn.sync_connection
    translated: BaseException = error
    if isinstance(error, Exception) and not isinstance(error, conn.dialect.loaded_dbapi.Error):
        try:
            adapter._handle_exception(error)
        except Exception as dbapi_error:  # what the driver's error is in DBAPI terms
            translated = dbapi_error
    sync._handle_dbapi_exception(translated, sql, arguments, None, None)
    raise AssertionError("unreachable")  # pragma: no cover
