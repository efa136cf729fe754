"""One async engine per process, with the transaction discipline the write protocol relies on.

PostgreSQL runs every write transaction in READ COMMITTED (forced here, whatever the server
default: under REPEATABLE READ two appenders can read the same chain head and fork the audit
chain) with statement and lock timeouts, and ends a statement whose client went away
(`CLIENT_CHECK_MS`). Its reads run in autocommit: under READ COMMITTED every
statement takes its own snapshot anyway, so BEGIN and COMMIT would only add two round trips.
A pooled connection is pinged only when it sat idle for `PING_AFTER_IDLE` seconds (with this
driver a ping is three round trips: pinging every checkout cost a read three and a write six).
The hot path's own connections (a read's look-up, an update's one-statement commit, a publish)
are kept between calls instead of checked in and out each time (`held`).
Inside a write transaction the write path's own statements are sent by the driver itself
(`driver_writes.DriverWrites`); the transaction stays SQLAlchemy's, except for one made of
such statements only (`driver_write`: a publish), which the driver begins and commits.

SQLite runs in WAL mode with real `BEGIN IMMEDIATE` write transactions (the driver would
otherwise not begin a transaction before a SELECT), serialised in-process by a lock so
concurrent writers queue instead of sleeping in SQLite's busy handler. A file database's
statements run on the event loop's thread (`sqlite_inline`: no hand-off to a driver thread per
call, busy waits asynchronous, write transactions on a synchronous connection), and its WAL is
checkpointed on a worker thread every `CHECKPOINT_EVERY` writes instead of inside a COMMIT. Its
reads keep a deferred BEGIN (one snapshot for every statement of the read), except
`select_once`: a single SELECT needs no transaction, and it runs through a synchronous
autocommit connection, without SQLAlchemy's async adaptation. Any SQLite error there (a busy
file) retries through the pool.

A write transaction is a `WriteTransaction`: the connection plus what the statements inside
learned about the transaction (its id on PostgreSQL, for settling a lost COMMIT) and what must
happen once it committed. Nothing travels through the connection's `info` dictionary.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Executable, Row, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import DataError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool

from panaversity_fs.config import Settings
from panaversity_fs.db.driver_writes import DriverWrites, driver_connection, driver_plan, run_inline
from panaversity_fs.db.held import IDLE_SINCE, HeldConnections, held_per_use
from panaversity_fs.db.sqlite_inline import InlineWrites, begin_immediate, checkpoint, inline_creator
from panaversity_fs.errors import Internal, PanaversityFSError, Unavailable

logger = logging.getLogger(__name__)

DB_ERRORS = (SQLAlchemyError, OSError)
"""What a failing database or a lost connection raises through SQLAlchemy."""

COMMAND_TIMEOUT_MARGIN = 1.0
"""Seconds the driver waits beyond `statement_timeout` before it gives up on a statement:
enough for PostgreSQL's own cancellation to arrive first from a database that is alive."""

CHECKPOINT_EVERY = 100
"""SQLite write transactions between two WAL checkpoints (each a few pages: SQLite's own
automatic checkpoint would come every thousand pages, inside a COMMIT, on the loop thread)."""

CLIENT_CHECK_MS = 50
"""How often (ms) PostgreSQL checks, while a statement of ours runs, that our end of the
connection is still open (`client_connection_check_interval`, PostgreSQL 14+). A statement that
commits on its own (`commit_sql`) can wait on a row lock; if its server is killed meanwhile,
the check ends it within this time instead of letting it commit after the caller has already
re-read the file to settle the lost answer."""

PING_AFTER_IDLE = 10.0
"""Seconds a pooled PostgreSQL connection may sit idle before its next checkout pings it (a
connection the server or a proxy dropped meanwhile is replaced instead of failing a call)."""

_WRITE_OPTION = "pfs_write"


def database_failure(exc: BaseException) -> PanaversityFSError:
    """Log a database failure and return the caller's error: UNAVAILABLE (safe to retry), or
    INTERNAL when the database refused a value (a retry would fail the same way)."""
    if isinstance(exc, DataError):
        logger.error("the database refused a value", exc_info=exc)
        return Internal("the database refused a value of this request; retrying will not help")
    logger.warning("database failure", exc_info=exc)
    return Unavailable("the database is unavailable; nothing was changed, retry later")


@dataclass(eq=False)
class WriteTransaction:
    """An open write transaction: its connection, and what its statements recorded about it."""

    conn: AsyncConnection
    transaction_id: tuple[int, int] | None = None
    """`(txid, backend pid)` on PostgreSQL once a statement read it (the audit append does):
    what `transactions.settle` asks about when the answer to COMMIT is lost."""
    _on_commit: list[Callable[[], None]] = field(default_factory=list[Callable[[], None]])

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run `action` once this transaction has committed (never if it rolls back)."""
        self._on_commit.append(action)


class Database:
    """The process's engine plus `read()` / `write()` transaction scopes."""

    def __init__(
        self,
        engine: AsyncEngine,
        point_reads: Engine | None = None,
        wal_file: str | None = None,
        writer: Engine | None = None,
        busy_timeout: float = 0.0,
        held_per_use: int = 0,
    ) -> None:
        """`point_reads` and `writer`: synchronous engines on the same SQLite file, for
        `select_once` and for write transactions; `busy_timeout`: how long a write waits for
        another connection's write lock; `held_per_use`: PostgreSQL connections each of
        `fetch_prepared`, `driver_write` and `driver_autocommit` keeps between calls (`held`)."""
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._writer = writer
        self._busy_timeout = busy_timeout
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        self._autocommit = None if self.is_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        self._point_reads = point_reads
        self._point_conn: Connection | None = None
        self._held: list[HeldConnections[Any]] = []
        self._held_reads = HeldConnections[PoolProxiedConnection](held_per_use, PING_AFTER_IDLE, self._held)
        self._held_writes = HeldConnections[Connection](held_per_use, PING_AFTER_IDLE, self._held)
        self._held_autocommit = HeldConnections[Connection](held_per_use, PING_AFTER_IDLE, self._held)
        if not self.is_sqlite:
            event.listen(engine.sync_engine, "handle_error", self._release_held_on_disconnect)
        self._wal_file = wal_file
        self._writes_since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Build the engine described by `settings` (pool, timeouts, SQLite pragmas)."""
        engine = create_engine(settings)
        wal_file = sqlite_file(settings.database_url) if engine.dialect.name == "sqlite" else None
        return cls(
            engine,
            _point_read_engine(engine, settings),
            wal_file,
            _writer_engine(settings) if wal_file is not None else None,
            settings.database_statement_timeout,
            held_per_use(settings.database_pool_size, settings.database_max_overflow),
        )

    @property
    def point_read_engine(self) -> Engine | None:
        """The synchronous SQLite engine `select_once` uses (None on PostgreSQL or in memory)."""
        return self._point_reads

    @property
    def transaction_engines(self) -> list[Engine]:
        """The engines whose connections run transactions (for event listeners): the async
        engine's, and on a SQLite file the write transactions' own."""
        return [self.engine.sync_engine] + ([self._writer] if self._writer is not None else [])

    @asynccontextmanager
    async def read(self) -> AsyncGenerator[AsyncConnection, None]:
        """A read-only scope: a deferred transaction on SQLite (one snapshot), autocommit
        statements on PostgreSQL (READ COMMITTED gives each statement its own snapshot)."""
        if self._autocommit is None:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
        else:
            async with self._autocommit.connect() as conn:
                yield conn

    async def select_once(self, statement: Executable, parameters: dict[str, Any]) -> Sequence[Row[Any]]:
        """Run one SELECT (with its bound `parameters`) outside any transaction; return its rows.

        On SQLite it runs synchronously on the calling thread (the event loop's); if SQLite
        refuses it there (a busy file, WAL recovery) it runs again through the pool.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, OSError: the database failed.
        """
        if self._point_reads is not None:
            try:
                conn = self._point_connection()
                plan = driver_plan(statement, parameters, None, conn.dialect)
                if plan is not None:
                    return run_inline(conn, plan, parameters).all()
                return conn.execute(statement, parameters).all()
            except OperationalError:
                self._drop_point_connection()
        async with self.read() as conn:
            return (await conn.execute(statement, parameters)).all()

    async def fetch_prepared(self, sql: str, *arguments: Any) -> list[Any]:
        """Run one SELECT written for PostgreSQL (`$1`, `$2` ... placeholders) outside any
        transaction, as a statement the driver prepares once per connection; return its rows
        (mappings by column name). PostgreSQL only.

        The point reads of the hot path use it: through SQLAlchemy's async adapter one costs
        480 us of CPU here, sent by the driver itself 110 us. The connection is one a read
        held (`held`), else a bare pooled connection (its idle ping included): wrapping it
        in an `AsyncConnection` cost another 60-95 us per read. The driver runs a statement
        outside a transaction in autocommit. A connection that failed is discarded.

        Raises:
            sqlalchemy.exc.OperationalError: the database failed (the driver's error inside).
        """
        assert not self.is_sqlite, "fetch_prepared is for PostgreSQL"
        pooled = self._held_reads.take()
        if pooled is None:
            try:
                pooled = await self.engine.raw_connection()
            except SQLAlchemyError:
                raise
            except Exception as exc:  # a bare checkout does not wrap the driver's connect errors
                raise OperationalError(sql, arguments, exc) from exc
        try:
            driver: Any = pooled.driver_connection
            records: list[Any] = await driver.fetch(sql, *arguments)
        except BaseException as exc:
            pooled.invalidate()  # a cancelled query may still be running on it
            pooled.close()
            self._held_reads.failed()
            if isinstance(exc, Exception):  # whatever the driver raises; the caller sees DB_ERRORS
                raise OperationalError(sql, arguments, exc) from exc
            raise
        self._held_reads.give_back(pooled)
        return records

    def _release_held_on_disconnect(self, context: ExceptionContext) -> None:
        """A lost connection anywhere makes SQLAlchemy invalidate the whole pool (each pooled
        connection is replaced at its next checkout): the held ones go back to it too."""
        if context.is_disconnect:
            for held in self._held:
                held.release_all()

    @property
    def held_connections(self) -> list[PoolProxiedConnection]:
        """The pooled connections held between calls (`held`): point reads', then publishes',
        then one-statement commits'."""
        writes = self._held_writes.held() + self._held_autocommit.held()
        return self._held_reads.held() + [sync.connection for sync in writes]

    def _point_connection(self) -> Connection:
        conn = self._point_conn
        if conn is None or conn.invalidated or conn.closed:
            assert self._point_reads is not None
            conn = self._point_conn = self._point_reads.connect()
        return conn

    def _drop_point_connection(self) -> None:
        conn, self._point_conn = self._point_conn, None
        if conn is not None:
            try:
                conn.close()
            except SQLAlchemyError:
                logger.debug("closing a failed point-read connection failed", exc_info=True)

    @asynccontextmanager
    async def write(self) -> AsyncGenerator[WriteTransaction, None]:
        """A write transaction: committed on normal exit, rolled back on an exception; its
        `after_commit` actions run once the COMMIT succeeded."""
        if self._sqlite_writer is None:
            async with self.engine.connect() as conn:
                tx = WriteTransaction(DriverWrites(self.engine, conn.sync_connection))
                async with conn.begin():
                    yield tx
        elif self._writer is None:  # in memory: one pool of connections for everything
            async with self._sqlite_writer, self.engine.connect() as conn:
                await conn.execution_options(**{_WRITE_OPTION: True})
                tx = WriteTransaction(conn)
                async with conn.begin():
                    yield tx
        else:
            async with self._sqlite_writer:
                with self._writer.connect() as sync_conn:
                    await begin_immediate(sync_conn, self._busy_timeout)
                    tx = WriteTransaction(InlineWrites(self.engine, sync_conn))
                    try:
                        yield tx
                    except BaseException:
                        _roll_back(sync_conn)
                        raise
                    try:
                        sync_conn.commit()
                    except BaseException:
                        _end_driver_transaction(sync_conn)
                        raise
            self._count_toward_checkpoint()
        for action in tx._on_commit:  # pyright: ignore[reportPrivateUsage]
            action()

    @asynccontextmanager
    async def driver_write(self) -> AsyncGenerator[WriteTransaction, None]:
        """`write()` for a transaction of statements built once only (`driver_writes.built_once`):
        on PostgreSQL the driver begins and commits it (`driver_writes.driver_connection`)."""
        if self.is_sqlite:  # its write transactions already send statements synchronously
            async with self.write() as tx:
                yield tx
            return
        async with driver_connection(self.engine, self._held_writes) as conn:
            tx = WriteTransaction(conn)
            yield tx
        for action in tx._on_commit:  # pyright: ignore[reportPrivateUsage]
            action()

    @asynccontextmanager
    async def driver_autocommit(self) -> AsyncGenerator[DriverWrites, None]:
        """A PostgreSQL connection whose statements, built once only, are each a transaction of
        their own, sent by the driver (`driver_writes.driver_connection`)."""
        assert self._autocommit is not None, "driver_autocommit is for PostgreSQL"
        async with driver_connection(self._autocommit, self._held_autocommit) as conn:
            yield conn

    def _count_toward_checkpoint(self) -> None:
        """Start a WAL checkpoint on a worker thread every `CHECKPOINT_EVERY` SQLite writes."""
        if self._wal_file is None:
            return
        self._writes_since_checkpoint += 1
        running = self._checkpointing is not None and not self._checkpointing.done()
        if self._writes_since_checkpoint < CHECKPOINT_EVERY or running:
            return
        self._writes_since_checkpoint = 0
        self._checkpointing = asyncio.create_task(self._checkpoint(self._wal_file))

    async def _checkpoint(self, wal_file: str) -> None:
        assert self._sqlite_writer is not None
        # Writes wait meanwhile (reads do not): SQLite starts the WAL over only if the next
        # write begins with every frame copied, else the file grows for ever.
        async with self._sqlite_writer:
            try:
                await asyncio.to_thread(checkpoint, wal_file)
            except sqlite3.Error:
                # The next one copies what this one left; the WAL only grows meanwhile.
                logger.warning("a WAL checkpoint failed", exc_info=True)

    async def dispose(self) -> None:
        """Close every pooled connection (after a running WAL checkpoint)."""
        if self._checkpointing is not None:
            await self._checkpointing
        self._drop_point_connection()
        for held in self._held:
            held.release_all()
        for engine in (self._point_reads, self._writer):
            if engine is not None:
                engine.dispose()
        await self.engine.dispose()


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine for `settings.database_url`."""
    url = settings.database_url
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is None:
            engine = create_async_engine(url, pool_size=5, max_overflow=10, pool_timeout=30)
        else:
            creator = inline_creator(path, settings.database_statement_timeout)
            engine = create_async_engine(
                url, pool_size=5, max_overflow=10, pool_timeout=30, async_creator=creator
            )
        _install_sqlite_hooks(engine, settings, inline=path is not None)
        return engine
    timeout_ms = int(settings.database_statement_timeout * 1000)
    connect_args: dict[str, Any] = {
        "server_settings": {
            "statement_timeout": str(timeout_ms),
            "lock_timeout": str(timeout_ms),
            "idle_in_transaction_session_timeout": str(timeout_ms * 4),
            "client_connection_check_interval": str(CLIENT_CHECK_MS),
            "application_name": "panaversity-fs",
            # Autocommit reads run at the session default: make it READ COMMITTED too.
            "default_transaction_isolation": "read committed",
        },
        # The client-side bound on every statement, for a database that stopped answering
        # (statement_timeout cannot fire then). SQLAlchemy then spends up to 2 s closing the
        # connection: a statement sent to a dead database fails within statement timeout + 3 s.
        "command_timeout": settings.database_statement_timeout + COMMAND_TIMEOUT_MARGIN,
        "timeout": settings.database_connect_timeout,
    }
    engine = create_async_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        connect_args=connect_args,
    )
    _ping_after_idle(engine)
    return engine


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection at checkout only if it sat idle for `PING_AFTER_IDLE` seconds;
    a failed ping makes the pool replace the connection (`DisconnectionError`)."""

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get(IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # whatever a dead connection raises, the pool retries
            raise DisconnectionError("a pooled connection failed its ping") from exc


def _point_read_engine(engine: AsyncEngine, settings: Settings) -> Engine | None:
    """A synchronous engine on the same SQLite file for `Database.select_once` (None for
    PostgreSQL and for an in-memory database, which a second connection would not see)."""
    if engine.dialect.name != "sqlite":
        return None
    if sqlite_file(settings.database_url) is None:
        return None
    url = make_url(settings.database_url)
    sync = create_sync_engine(url.set(drivername="sqlite+pysqlite"), poolclass=StaticPool)

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit: one statement, one snapshot
        cursor = dbapi_connection.cursor()
        # Never wait on the event loop: a busy file makes `select_once` use the pool instead.
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return sync


def _roll_back(conn: Connection) -> None:
    """Roll back after a failure without hiding it (a broken connection cannot roll back; the
    pool discards it)."""
    try:
        conn.rollback()
    except SQLAlchemyError:
        logger.debug("rolling back a failed write transaction failed", exc_info=True)


def _end_driver_transaction(conn: Connection) -> None:
    """Roll back what a failed COMMIT left open in SQLite: SQLAlchemy counts its transaction as
    ended either way, and the pool would then skip its reset and hand the next write a
    connection still inside this transaction."""
    try:
        driver: Any = conn.connection.driver_connection
        if driver is not None and driver.in_transaction:
            driver.rollback()
    except (SQLAlchemyError, sqlite3.Error):
        logger.debug("ending a failed write transaction failed", exc_info=True)


def _writer_engine(settings: Settings) -> Engine:
    """A synchronous engine on the SQLite file for write transactions: one connection (the
    writes of a process are serialised anyway), run on the loop's thread, so it never waits in
    SQLite's busy handler (`begin_immediate` waits asynchronously instead)."""
    url = make_url(settings.database_url).set(drivername="sqlite+pysqlite")
    sync = create_sync_engine(url, pool_size=1, max_overflow=0, connect_args={"check_same_thread": False})

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, busy_ms=0, inline=True)

    return sync


def _sqlite_pragmas(dbapi_connection: Any, busy_ms: int, inline: bool) -> None:
    # Take transaction control away from the driver: we emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    if inline:
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names (None for an in-memory database)."""
    database = make_url(url).database
    if database in (None, "", ":memory:") or "mode=memory" in url:
        return None
    return database


def _install_sqlite_hooks(engine: AsyncEngine, settings: Settings, inline: bool) -> None:
    # Inline connections wait for a busy file asynchronously (sqlite_inline); their WAL is
    # checkpointed on a worker thread (`Database.write`), not by whichever COMMIT fills it.
    busy_ms = 0 if inline else int(settings.database_statement_timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, busy_ms, inline)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
