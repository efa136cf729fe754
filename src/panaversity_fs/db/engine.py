"""One async engine per process, with the transaction discipline the write protocol relies on.

PostgreSQL runs every transaction in READ COMMITTED (forced here, whatever the server default:
under REPEATABLE READ two appenders can read the same chain head and fork the audit chain) with
statement and lock timeouts. SQLite runs in WAL mode with real `BEGIN IMMEDIATE` write
transactions (the driver would otherwise not begin a transaction before a SELECT), serialised
in-process by a lock so concurrent writers queue instead of sleeping in SQLite's busy handler.

A write transaction is a `WriteTransaction`: the connection plus what the statements inside
learned about the transaction (its id on PostgreSQL, for settling a lost COMMIT) and what must
happen once it committed. Nothing travels through the connection's `info` dictionary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from panaversity_fs.config import Settings
from panaversity_fs.errors import Internal, PanaversityFSError, Unavailable

logger = logging.getLogger(__name__)

DB_ERRORS = (SQLAlchemyError, OSError)
"""What a failing database or a lost connection raises through SQLAlchemy."""

COMMAND_TIMEOUT_MARGIN = 1.0
"""Seconds the driver waits beyond `statement_timeout` before it gives up on a statement:
enough for PostgreSQL's own cancellation to arrive first from a database that is alive."""

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

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Build the engine described by `settings` (pool, timeouts, SQLite pragmas)."""
        return cls(create_engine(settings))

    @asynccontextmanager
    async def read(self) -> AsyncGenerator[AsyncConnection, None]:
        """A read-only transaction (deferred on SQLite, READ COMMITTED on PostgreSQL)."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncGenerator[WriteTransaction, None]:
        """A write transaction: committed on normal exit, rolled back on an exception; its
        `after_commit` actions run once the COMMIT succeeded."""
        if self._sqlite_writer is None:
            async with self.engine.connect() as conn:
                tx = WriteTransaction(conn)
                async with conn.begin():
                    yield tx
        else:
            async with self._sqlite_writer, self.engine.connect() as conn:
                await conn.execution_options(**{_WRITE_OPTION: True})
                tx = WriteTransaction(conn)
                async with conn.begin():
                    yield tx
        for action in tx._on_commit:  # pyright: ignore[reportPrivateUsage]
            action()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine for `settings.database_url`."""
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=5, max_overflow=10, pool_timeout=30)
        _install_sqlite_hooks(engine, settings)
        return engine
    timeout_ms = int(settings.database_statement_timeout * 1000)
    connect_args: dict[str, Any] = {
        "server_settings": {
            "statement_timeout": str(timeout_ms),
            "lock_timeout": str(timeout_ms),
            "idle_in_transaction_session_timeout": str(timeout_ms * 4),
            "application_name": "panaversity-fs",
        },
        # The client-side bound on every statement, for a database that stopped answering
        # (statement_timeout cannot fire then). SQLAlchemy then spends up to 2 s closing the
        # connection: a statement sent to a dead database fails within statement timeout + 3 s.
        "command_timeout": settings.database_statement_timeout + COMMAND_TIMEOUT_MARGIN,
        "timeout": settings.database_connect_timeout,
    }
    return create_async_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def _install_sqlite_hooks(engine: AsyncEngine, settings: Settings) -> None:
    busy_ms = int(settings.database_statement_timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
