"""A guard on the hot path: the SQL statements one read and one update send, counted exactly,
and on PostgreSQL every round trip the driver makes (BEGIN, COMMIT and pings included); and the
one storage call a read makes.

Most of a call's cost is how many times it talks to the database (docs/benchmarks.md), so the
counts are pinned: a change that adds a statement or a round trip to the hot path fails here
and must say why (and update the budget). Counting is deterministic: no timing, no load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from panaversity_fs.app.resources import Resources, open_resources
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from panaversity_fs.errors import Conflict
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.paths import storage_key, version_key
from panaversity_fs.storage.blobs import STAGING_PREFIX
from tests.conftest import PAIRS, Backends

LESSON = "content/01-Budget/01-Hot/01-path.md"
WRITE_BUDGET = {
    # An update of a file whose hash this process committed last (no early look: see
    # EARLY_LOOK). Write transaction: (BEGIN), compare-and-swap (a trigger records the version),
    # chain head, audit entry, head update; publish transaction: (BEGIN), the pending flag
    # cleared (locking the row while the bytes move).
    "sqlite": ["BEGIN", "UPDATE", "SELECT", "INSERT", "UPDATE", "BEGIN", "UPDATE"],
    # PostgreSQL commits an update in one statement, a transaction of its own: the
    # compare-and-swap, the audit entry, the head move and (fs store) the staged bytes' copy
    # (db/commit_sql.py); its early look is the driver's own prepared statement (counted with the
    # round trips below). The publish's statement also removes that copy (db/publish_sql.py).
    "postgresql": ["WITH", "WITH"],
}
# An update whose expected hash this process did not commit (another process wrote the file
# last) first looks at the file's row outside any transaction, so that a stale hash is refused
# before anything is staged: one SELECT more (on PostgreSQL the driver's own, a round trip).
EARLY_LOOK = "SELECT"
# A read is one SELECT outside any transaction: on SQLite through the synchronous point-read
# connection, on PostgreSQL sent by the driver itself (a round trip below).
READ_BUDGET = {"sqlite": ["SELECT"], "postgresql": []}
DRIVER_TRIPS = {
    # Every round trip asyncpg makes that it does not send as one of SQLAlchemy's own prepared
    # statements: the one-statement commit; BEGIN and COMMIT of the publish transaction; and
    # the write path's statements, which the driver sends itself (db/driver_writes.py; counted
    # in WRITE_BUDGET too); the point reads (a read, the early look of a write). No ping (only
    # after sitting idle).
    "write": ["WITH", "BEGIN", "WITH", "COMMIT"],
    "read": ["SELECT"],
}


@contextmanager
def counted(db: Database) -> Iterator[list[str]]:
    """The first word of every statement `db` sends inside the block, through any of its engines."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.split()[0].upper())

    engines = [*db.transaction_engines, db.point_read_engine]
    for engine in engines:
        if engine is not None:
            event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        for engine in engines:
            if engine is not None:
                event.remove(engine, "before_cursor_execute", note)


@asynccontextmanager
async def round_trips(db: Database) -> AsyncIterator[list[str]]:
    """The first word of every query asyncpg sends outside SQLAlchemy's prepared statements inside
    the block (transaction control, pings, the driver's own point reads; PostgreSQL only)."""
    seen: list[str] = []
    connections: list[Any] = []

    def log(record: Any) -> None:
        query = record.query.strip(" ;")
        seen.append(query.split()[0].upper() if query else "PING")

    def checkout(dbapi_connection: Any, *_rest: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(log)
        connections.append(dbapi_connection.driver_connection)

    if db.is_sqlite:
        yield seen
        return
    pool = db.engine.sync_engine.pool
    event.listen(pool, "checkout", checkout)
    for held in db.held_connections:  # checked out by an earlier read, reused without a checkout
        checkout(held)
    try:
        yield seen
        await asyncio.sleep(0.05)  # loggers are called soon after each query, not during it
    finally:
        event.remove(pool, "checkout", checkout)
        for connection in connections:
            connection.remove_query_logger(log)


async def write(
    resources: Resources, target: Target, data: bytes, expected: str | None, agent: str = "budget"
) -> WriteOutcome:
    """`data` written to `target` by `agent`'s `write_content`, through the engine."""
    operation = Operation(Caller(agent), "write_content")
    return await resources.files.write(operation, target, data, sha256_hex(data), expected)


async def staged(resources: Resources) -> set[str]:
    """The keys of every staged object."""
    return {blob.key for blob in await resources.store.list(STAGING_PREFIX)}


async def last_audit(resources: Resources) -> tuple[Any, ...]:
    """Agent, error code and previous hash of the newest audit entry."""
    async with resources.db.read() as conn:
        row = (
            await conn.execute(
                select(audit_log.c.agent_id, audit_log.c.error_code, audit_log.c.prev_hash)
                .order_by(audit_log.c.seq.desc())
                .limit(1)
            )
        ).one()
    return tuple(row)


@pytest.mark.parametrize("combo", PAIRS)
async def test_an_update_and_a_read_send_exactly_their_budgeted_statements(
    backends: Backends, combo: str
) -> None:
    settings: Settings = await backends.settings(combo)
    async with open_resources(settings, background=False) as resources:
        dialect = resources.db.engine.dialect.name
        target = Target("budget-book", LESSON, None)
        first = b"# one\n"
        created = await write(resources, target, first, None)
        await resources.trail.recorder.flush()
        second = b"# two\n"
        async with round_trips(resources.db) as update_trips:
            with counted(resources.db) as update:
                await write(resources, target, second, created.file_hash)
        async with round_trips(resources.db) as read_trips:
            with counted(resources.db) as read:
                found = await resources.reader.read(target)
        assert found.text == "# two\n"
        await resources.trail.recorder.flush()
        async with open_resources(settings, background=False) as other_process:
            # its connections' first statements, off the count (the driver learns types once)
            warm = Target("budget-book", "content/01-Budget/01-Hot/02-warm.md", None)
            made = await write(other_process, warm, first, None)
            await write(other_process, warm, second, made.file_hash)
            third = b"# three\n"
            async with round_trips(other_process.db) as look_trips:
                with counted(other_process.db) as look:
                    await write(other_process, target, third, sha256_hex(second))
            await other_process.trail.recorder.flush()
    assert update == WRITE_BUDGET[dialect], update
    assert read == READ_BUDGET[dialect], read
    if dialect == "sqlite":
        assert look == [EARLY_LOOK, *WRITE_BUDGET[dialect]], look
    else:
        assert look == WRITE_BUDGET[dialect], look
    if dialect == "postgresql":
        assert update_trips == DRIVER_TRIPS["write"], update_trips
        assert read_trips == DRIVER_TRIPS["read"], read_trips
        assert look_trips == [EARLY_LOOK, *DRIVER_TRIPS["write"]], look_trips


@pytest.mark.parametrize("combo", PAIRS)
async def test_a_stale_write_costs_a_read_and_its_audit_entry_and_stages_nothing(
    backends: Backends, combo: str
) -> None:
    settings: Settings = await backends.settings(combo)
    async with open_resources(settings, background=False) as resources:
        target = Target("budget-book", LESSON, None)
        first = b"# one\n"
        created = await write(resources, target, first, None)
        staged_before = await staged(resources)
        stale = b"# stale\n"
        async with round_trips(resources.db) as trips:
            with counted(resources.db) as statements, pytest.raises(Conflict) as refused:
                await write(resources, target, stale, "0" * 64, agent="loser")
        # the early look, then the refusal's own audit transaction (chain head, entry, head)
        if resources.db.is_sqlite:
            assert [s for s in statements if s != "BEGIN"] == ["SELECT", "SELECT", "INSERT", "UPDATE"]
        else:
            assert statements == ["SELECT", "WITH"]
            assert trips == ["SELECT", "BEGIN", "SELECT", "WITH", "COMMIT"]
        assert refused.value.details["current_hash"] == created.file_hash
        assert await staged(resources) == staged_before
        assert not await resources.store.exists(version_key(sha256_hex(stale)))
        assert await last_audit(resources) == ("loser", "CONFLICT", created.file_hash)


@pytest.mark.parametrize("combo", PAIRS)
async def test_a_hash_this_process_wrote_that_another_replaced_is_refused_by_the_commit(
    backends: Backends, combo: str
) -> None:
    """The early look is skipped for the hash this process committed last; if another process
    replaced the file since, the commit refuses the write as the look would have (same error,
    same audit entry, its staged bytes removed), and the next such write looks first again."""
    settings: Settings = await backends.settings(combo)
    async with (
        open_resources(settings, background=False) as resources,
        open_resources(settings, background=False) as other_process,
    ):
        target = Target("budget-book", LESSON, None)
        first, second, stale = b"# one\n", b"# two\n", b"# stale\n"
        mine = await write(resources, target, first, None)
        theirs = await write(other_process, target, second, mine.file_hash, agent="other")
        staged_before = await staged(resources)
        for attempt in ("by the commit", "early"):
            async with round_trips(resources.db) as trips:
                with counted(resources.db) as statements, pytest.raises(Conflict) as refused:
                    await write(resources, target, stale, mine.file_hash, agent="loser")
            assert refused.value.details["current_hash"] == theirs.file_hash
            first_sent = statements[0] if resources.db.is_sqlite else trips[0]
            assert (first_sent == EARLY_LOOK) == (attempt == "early"), (attempt, statements, trips)
            assert await staged(resources) == staged_before
            assert await last_audit(resources) == ("loser", "CONFLICT", theirs.file_hash), attempt


class Recording:
    """A real storage object (the OpenDAL operator, the local folder), noting each call."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def noted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return noted


@pytest.mark.parametrize("combo", PAIRS)
async def test_a_read_asks_storage_once_for_exactly_the_journaled_size(
    backends: Backends, combo: str
) -> None:
    """OpenDAL's whole-object read allocates a 2 MiB buffer per call, which the pinned mmap
    threshold maps and unmaps each time (1.4 ms of CPU for a 5 KB read): reads are ranged. On
    a local folder the read is a system call, not OpenDAL's (a sixth of its CPU)."""
    settings: Settings = await backends.settings(combo)
    async with open_resources(settings, background=False) as resources:
        target = Target("budget-book", LESSON, None)
        text = b"# ranged\n" * 500
        await write(resources, target, text, None)
        store: Any = resources.store
        operator, store._operator = store._operator, Recording(store._operator)
        local = store._local
        if local is not None:
            store._local = Recording(local)
        found = await resources.reader.read(target)
        await resources.trail.recorder.flush()
        operator_calls = store._operator.calls
        local_calls = store._local.calls if local is not None else None
        store._operator = operator
    assert found.text.encode() == text
    if local is None:
        assert operator_calls == [
            ("read", (storage_key(target.book_id, target.path, None),), {"offset": 0, "size": len(text)})
        ]
    else:
        assert operator_calls == []
        assert local_calls == [("read", (storage_key(target.book_id, target.path, None), 0, len(text)), {})]
