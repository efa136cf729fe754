"""The hash-chained audit log: A-1 fork, A-2 genesis race, A-3 tamper detection, A-4 canonical
round trip, append-only triggers, CHECK constraints and fork guards, R6/R7 through the MCP tools.

Every test runs on SQLite and on PostgreSQL (`db_settings`). Tampering is done inside a
transaction that disables the append-only triggers, verifies on that same connection (with the
real `verify_database` code) and is rolled back, so one chain serves many trials.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.app.server import create_server
from panaversity_fs.audit.chain import GENESIS_HASH, ChainReport, compute_entry_hash
from panaversity_fs.audit.recorder import append_entries
from panaversity_fs.audit.verify import verify_connection, verify_database
from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql
from panaversity_fs.db.audit_sql import NewAuditEntry, chain_head, stream_entries
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import GLOBAL_CHAIN, audit_chain_head, audit_log
from testkit.databases import database_url
from tests.conftest import PG_URL, Backends
from tests.support import BOOK, LESSON, ToolFailure, call, client

WRITERS = 16
APPENDS_PER_WRITER = {"sqlite": 60, "postgresql": 150}
"""Kept small for the default run; PFS_AUDIT_APPENDS=500 gives the test catalogue's full A-1 (8,000 rows)."""
if os.environ.get("PFS_AUDIT_APPENDS"):
    APPENDS_PER_WRITER = dict.fromkeys(APPENDS_PER_WRITER, int(os.environ["PFS_AUDIT_APPENDS"]))
RR_ROUNDS = 40
TAMPER_CHAIN = 300
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(n: int, agent: str = "claude-lesson-writer-7", **changes: Any) -> NewAuditEntry:
    """A plausible mutation entry, distinct for each `n`."""
    made = NewAuditEntry(
        created_at=T0 + timedelta(microseconds=1_001 * n),
        agent_id=agent,
        operation=("write_content", "delete_content", "read_content")[n % 3],
        book_id=BOOK,
        path=f"content/01-Intro/01-Basics/{n % 50:02d}-lesson.md",
        user_id="__base__" if n % 4 else f"student-{n % 7}",
        prev_hash=sha(str(n - 1)) if n % 5 else None,
        new_hash=sha(str(n)),
        status=("success", "refused", "error")[n % 3],
        error_code=None if n % 3 == 0 else "CONFLICT",
        error_message=None if n % 3 == 0 else f"élève №{n} — conflict 🙂",
        execution_time_ms=n % 97,
        request_id=f"req-{n}",
    )
    return replace(made, **changes)


def kind(db: Database) -> str:
    return "sqlite" if db.is_sqlite else "postgresql"


async def all_entries(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return [dict(row) async for row in stream_entries(conn, batch=500)]


async def head_of(db: Database) -> tuple[int, str]:
    async with db.read() as conn:
        return await chain_head(conn)


async def build_chain(db: Database, count: int, batch: int = 25) -> list[dict[str, Any]]:
    for start in range(1, count + 1, batch):
        async with db.write() as tx:
            await append_entries(tx, [entry(n) for n in range(start, min(start + batch, count + 1))])
    rows = await all_entries(db)
    assert len(rows) == count
    return rows


async def assert_linear_chain(db: Database, count: int) -> list[dict[str, Any]]:
    """seq is 1..count, no two entries share a predecessor, links hold, verify and head agree."""
    rows = await all_entries(db)
    assert [row["seq"] for row in rows] == list(range(1, count + 1))
    prevs = [row["chain_prev_hash"] for row in rows]
    duplicates = [h for h, n in Counter(prevs).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} forks"
    assert prevs[0] == GENESIS_HASH
    for before, after in pairwise(rows):
        assert after["chain_prev_hash"] == before["entry_hash"], after["seq"]
    report = await verify_database(db)
    assert report.ok, report.as_dict()
    assert report.entries_checked == count and report.head_seq == count
    assert await head_of(db) == (count, rows[-1]["entry_hash"])
    return rows


async def show_isolation(conn: AsyncConnection) -> str:
    return str((await conn.exec_driver_sql("SHOW transaction_isolation")).scalar_one())


# -- concurrency --------------------------------------------------------------------


async def test_a1_concurrent_appenders_never_fork(db: Database) -> None:
    per_writer = APPENDS_PER_WRITER[kind(db)]
    seqs: list[int] = []

    async def writer(w: int) -> None:
        for i in range(per_writer):
            async with db.write() as tx:
                made = entry(i, agent=f"writer-{w}", request_id=f"{w}-{i}", created_at=datetime.now(UTC))
                seqs.extend((await append_entries(tx, [made])).seqs)

    async with asyncio.TaskGroup() as group:
        for w in range(WRITERS):
            group.create_task(writer(w))
    total = WRITERS * per_writer
    assert sorted(seqs) == list(range(1, total + 1))
    rows = await assert_linear_chain(db, total)
    assert Counter(row["agent_id"] for row in rows) == {f"writer-{w}": per_writer for w in range(WRITERS)}
    assert len({row["request_id"] for row in rows}) == total


async def test_a1_postgres_repeatable_read_default_is_overridden_and_never_forks(backends: Backends) -> None:
    """The database default is REPEATABLE READ; the engine must still run READ COMMITTED."""
    settings = await backends.settings("postgres-fs")
    name = make_url(settings.database_url).database
    raw = await asyncpg.connect(database_url(str(name), PG_URL))
    try:
        await raw.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation TO 'repeatable read'")
    finally:
        await raw.close()
    raw = await asyncpg.connect(database_url(str(name), PG_URL))
    try:  # the setting really is in force for new sessions
        assert await raw.fetchval("SHOW transaction_isolation") == "repeatable read"
    finally:
        await raw.close()

    db = Database.from_settings(settings)  # new engine: new connections see the new default
    try:
        async with db.read() as conn:
            assert await show_isolation(conn) == "read committed"
        barrier = asyncio.Barrier(WRITERS)
        seen: list[str] = []

        async def writer(w: int) -> None:
            for i in range(RR_ROUNDS):
                async with db.write() as tx:
                    conn = tx.conn
                    seen.append(await show_isolation(conn))  # the transaction is open ...
                    await barrier.wait()  # ... in every writer before any of them appends
                    await append_entries(tx, [entry(i, agent=f"rr-writer-{w}", request_id=f"{w}-{i}")])

        async with asyncio.TaskGroup() as group:
            for w in range(WRITERS):
                group.create_task(writer(w))
        assert set(seen) == {"read committed"}
        await assert_linear_chain(db, WRITERS * RR_ROUNDS)
    finally:
        await db.dispose()


async def test_a2_genesis_race_has_exactly_one_genesis_entry(db: Database) -> None:
    assert await head_of(db) == (0, GENESIS_HASH)
    # PostgreSQL: every appender has its transaction open before any appends. SQLite serialises
    # write transactions in-process, so a barrier inside one would deadlock.
    barrier = None if db.is_sqlite else asyncio.Barrier(WRITERS)

    async def first_append(w: int) -> int:
        async with db.write() as tx:
            conn = tx.conn
            if barrier is not None:
                await conn.exec_driver_sql("SELECT 1")
                await barrier.wait()
            (seq,) = (await append_entries(tx, [entry(w, agent=f"genesis-{w}")])).seqs
            return seq

    seqs = await asyncio.gather(*(first_append(w) for w in range(WRITERS)))
    assert sorted(seqs) == list(range(1, WRITERS + 1))
    rows = await assert_linear_chain(db, WRITERS)
    genesis = [row for row in rows if row["chain_prev_hash"] == GENESIS_HASH]
    assert len(genesis) == 1 and genesis[0]["seq"] == 1


# -- tamper detection ---------------------------------------------------------------------


async def verify_on(conn: AsyncConnection) -> ChainReport:
    return await verify_connection(conn)


@asynccontextmanager
async def tampering(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction with the append-only triggers off, always rolled back."""
    async with db.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            if db.is_sqlite:
                await conn.exec_driver_sql("DROP TRIGGER audit_log_no_update")
                await conn.exec_driver_sql("DROP TRIGGER audit_log_no_delete")
            else:
                await conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
            yield conn
        finally:
            await transaction.rollback()


async def rows_from(conn: AsyncConnection, first: int) -> list[dict[str, Any]]:
    return [dict(row) async for row in stream_entries(conn, after_seq=first - 1)]


async def delete_from(conn: AsyncConnection, first: int, last: int | None = None) -> None:
    condition = audit_log.c.seq >= first
    if last is not None:
        condition = condition & (audit_log.c.seq <= last)
    await conn.execute(delete(audit_log).where(condition))


async def wind_head_back(conn: AsyncConnection, seq: int, head_hash: str) -> None:
    """Set the chain head to `(seq, head_hash)`."""
    await conn.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
        .values(seq=seq, head_hash=head_hash)
    )


async def rehash_from(conn: AsyncConnection, k: int) -> str:
    """Rewrite entry k (a new agent) and re-hash every entry after it; return the new head hash."""
    suffix = await rows_from(conn, k)
    suffix[0]["agent_id"] = "mallory"
    prev = suffix[0]["chain_prev_hash"]
    for row in suffix:
        row["chain_prev_hash"] = prev
        row["entry_hash"] = prev = compute_entry_hash(row)
    await delete_from(conn, k)
    await conn.execute(insert(audit_log), suffix)
    return prev


def random_hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


FIELD_TAMPERS: dict[str, Callable[[dict[str, Any], random.Random], Any]] = {
    "agent_id": lambda row, _: row["agent_id"] + "-mallory",
    "path": lambda row, _: row["path"].replace("lesson", "lesson-x"),
    "book_id": lambda row, _: "other-book",
    "user_id": lambda row, _: "someone-else",
    "operation": lambda row, _: "delete_content" if row["operation"] != "delete_content" else "write_content",
    "status": lambda row, _: "success" if row["status"] != "success" else "refused",
    "error_message": lambda row, _: (row["error_message"] or "") + ".",
    "execution_time_ms": lambda row, _: row["execution_time_ms"] + 1,
    "created_at": lambda row, _: row["created_at"] + timedelta(microseconds=1),
    "request_id": lambda row, _: "req-forged",
    "prev_hash": lambda _, rng: random_hex(rng),
    "new_hash": lambda _, rng: random_hex(rng),
    "chain_prev_hash": lambda _, rng: random_hex(rng),
    "entry_hash": lambda _, rng: random_hex(rng),
}


@pytest.fixture
async def chain(db: Database) -> list[dict[str, Any]]:
    return await build_chain(db, TAMPER_CHAIN)


def positions(rng: random.Random, count: int, low: int, high: int) -> list[int]:
    """`count` random positions in [low, high], always including both ends."""
    return [low, high, *(rng.randint(low, high) for _ in range(count - 2))]


async def test_a3_changing_any_field_of_row_k_is_detected_at_k(
    db: Database, chain: list[dict[str, Any]]
) -> None:
    rng = random.Random(1)
    n = len(chain)
    trials = 0
    for field, tamper in FIELD_TAMPERS.items():
        for k in positions(rng, 4, 1, n):
            async with tampering(db) as conn:
                original = chain[k - 1]
                forged = tamper(original, rng)
                assert forged != original[field]
                await conn.execute(update(audit_log).where(audit_log.c.seq == k).values({field: forged}))
                report = await verify_on(conn)
            expected = "chain link broken" if field == "chain_prev_hash" else "entry content altered"
            assert (report.ok, report.first_bad_seq, report.reason) == (False, k, expected), (field, k)
            assert report.entries_checked == k - 1
            trials += 1
    assert trials == 4 * len(FIELD_TAMPERS)
    assert (await verify_database(db)).ok  # every trial was rolled back ...
    with pytest.raises(DBAPIError, match="append-only"):  # ... the triggers with it
        async with db.write() as tx:
            conn = tx.conn
            await conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(agent_id="mallory"))


async def test_a3_deleting_row_k_is_detected_at_k(db: Database, chain: list[dict[str, Any]]) -> None:
    rng = random.Random(2)
    n = len(chain)
    for k in positions(rng, 12, 1, n):
        async with tampering(db) as conn:
            await delete_from(conn, k, k)
            report = await verify_on(conn)
        expected = "entries missing at tail" if k == n else "sequence gap"
        assert (report.ok, report.first_bad_seq, report.reason) == (False, k, expected), k
    assert (await verify_database(db)).ok


async def test_a3_swapping_rows_k_and_k_plus_1_is_detected_at_k(
    db: Database, chain: list[dict[str, Any]]
) -> None:
    rng = random.Random(3)
    n = len(chain)
    for k in positions(rng, 12, 1, n - 1):
        async with tampering(db) as conn:
            row_k, row_next = chain[k - 1], chain[k]
            await delete_from(conn, k, k + 1)  # (UNIQUE entry_hash / chain_prev_hash forbid an in-place swap)
            await conn.execute(insert(audit_log), [row_next | {"seq": k}, row_k | {"seq": k + 1}])
            report = await verify_on(conn)
        assert (report.ok, report.first_bad_seq, report.reason) == (False, k, "chain link broken"), k
    assert (await verify_database(db)).ok


async def test_a3_inserted_forged_rows_are_detected(db: Database, chain: list[dict[str, Any]]) -> None:
    rng = random.Random(4)
    n = len(chain)
    last = chain[-1]

    # A forged row pushed in at position k (later rows shifted up by one). It cannot link to
    # row k-1's hash: that predecessor is taken (UNIQUE chain_prev_hash), so it links elsewhere.
    for k in positions(rng, 8, 1, n):
        async with tampering(db) as conn:
            await conn.execute(update(audit_log).where(audit_log.c.seq >= k).values(seq=-audit_log.c.seq - 1))
            await conn.execute(update(audit_log).where(audit_log.c.seq < 0).values(seq=-audit_log.c.seq))
            forged = dict(chain[k - 1]) | {
                "seq": k,
                "agent_id": "mallory",
                "chain_prev_hash": random_hex(rng),
            }
            forged["entry_hash"] = compute_entry_hash(forged)
            await conn.execute(insert(audit_log), [forged])
            report = await verify_on(conn)
        assert (report.ok, report.first_bad_seq, report.reason) == (False, k, "chain link broken"), k

    # A well-formed row appended at n+1 without moving the chain head.
    async with tampering(db) as conn:
        forged = dict(last) | {"seq": n + 1, "agent_id": "mallory", "chain_prev_hash": last["entry_hash"]}
        forged["entry_hash"] = compute_entry_hash(forged)
        await conn.execute(insert(audit_log), [forged])
        report = await verify_on(conn)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, n + 1, "entry beyond the chain head")

    # The last row renumbered to n+1, leaving a gap at n.
    async with tampering(db) as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == n).values(seq=n + 1))
        report = await verify_on(conn)
    # Verification stops at the head (n), so the renumbered row shows up as n missing.
    assert (report.ok, report.first_bad_seq, report.reason) == (False, n, "entries missing at tail")
    assert (await verify_database(db)).ok


async def test_a3_truncating_the_tail_is_detected_by_the_chain_head(
    db: Database, chain: list[dict[str, Any]]
) -> None:
    n = len(chain)
    async with tampering(db) as conn:
        await delete_from(conn, n - 2)
        report = await verify_on(conn)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, n - 2, "entries missing at tail")
    assert report.entries_checked == n - 3
    # Truncating the tail and winding the head back with it is a consistent shorter chain.
    async with tampering(db) as conn:
        await delete_from(conn, n - 2)
        await wind_head_back(conn, n - 3, chain[n - 4]["entry_hash"])
        report = await verify_on(conn)
    assert report.ok and report.head_seq == n - 3  # only a checkpoint catches this (test_audit_checkpoints)
    assert (await verify_database(db)).ok


async def test_a3_rehashing_a_whole_suffix_is_not_detected_without_a_checkpoint(
    db: Database, chain: list[dict[str, Any]]
) -> None:
    """Documents the limit of in-database verification: an attacker who can write the tables
    and re-hashes every entry from k on, and the chain head, leaves a valid chain. Signed
    checkpoints kept outside the database catch it (`test_audit_checkpoints.py`)."""
    rng = random.Random(5)
    n = len(chain)
    for k in positions(rng, 5, 1, n):
        for move_head in (False, True):
            async with tampering(db) as conn:
                new_head = await rehash_from(conn, k)
                if move_head:
                    await wind_head_back(conn, n, new_head)  # seq stays n: only the hash moves
                report = await verify_on(conn)
            if move_head:
                assert report.ok and report.entries_checked == n, (k, report.as_dict())
            else:
                assert (report.ok, report.first_bad_seq, report.reason) == (
                    False,
                    n + 1,
                    "chain head mismatch",
                ), k
    assert (await verify_database(db)).ok
    assert [row["agent_id"] for row in await all_entries(db)] == [row["agent_id"] for row in chain]


# -- canonical round trip -----------------------------------------------------------------

SPECIAL_TEXT = [
    "e\u0301cole",  # NFD
    "\u00e9cole",  # NFC of the same
    "👩🏽‍💻 lesson-writer",
    "🇵🇰🇺🇳",
    "\u202eevil\u202c",
    "\ufeffbom",
    "\U0010ffff",
    'quote " back \\ slash',
    "line\r\nbreak\t",
    "  padded  ",
    "\u2028\u2029",
    "Ǆ ß ﬁ İ",
]


def texts(min_size: int = 0, max_size: int = 100) -> st.SearchStrategy[str]:
    base = st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"), min_size=min_size, max_size=max_size
    )
    nfd = base.map(lambda s: unicodedata.normalize("NFD", s)).filter(lambda s: min_size <= len(s) <= max_size)
    special = st.sampled_from([s for s in SPECIAL_TEXT if min_size <= len(s) <= max_size])
    return st.one_of(base, nfd, special)


HEX64 = st.binary(min_size=32, max_size=32).map(bytes.hex)

ENTRIES = st.builds(
    NewAuditEntry,
    created_at=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2100, 12, 31, 23, 59, 59, 999999),
        timezones=st.just(UTC),
    ),
    agent_id=texts(1, 255).filter(lambda s: s.lower() != "system"),
    operation=st.one_of(st.sampled_from(["read_content", "write_content", "delete_content"]), texts(0, 32)),
    book_id=texts(0, 64),
    path=texts(0, 600),
    user_id=texts(0, 100),
    prev_hash=st.none() | HEX64,
    new_hash=st.none() | HEX64,
    status=st.sampled_from(["success", "refused", "error"]),
    error_code=st.none() | texts(0, 32),
    error_message=st.none() | texts(0, 500),
    execution_time_ms=st.none() | st.integers(-(2**31), 2**31 - 1),
    request_id=st.none() | texts(0, 64),
)


@hypothesis_settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(made=ENTRIES)
async def test_a4_entry_hash_recomputed_from_the_stored_row_matches(
    db: Database, made: NewAuditEntry
) -> None:
    async with db.write() as tx:
        conn = tx.conn
        (seq,) = (await append_entries(tx, [made])).seqs
    async with db.read() as conn:
        stored = [dict(row) async for row in stream_entries(conn, after_seq=seq - 1)]
    assert [row["seq"] for row in stored] == [seq]
    row = stored[0]
    for field in NewAuditEntry.__dataclass_fields__:
        assert row[field] == getattr(made, field), field  # byte-exact round trip
    assert compute_entry_hash(row) == row["entry_hash"]
    report = await verify_database(db)
    assert report.ok and report.head_seq == seq, report.as_dict()


# -- append-only, CHECK constraints, fork guards -----------------------------------------------


async def test_the_app_cannot_update_delete_or_truncate_audit_rows(db: Database) -> None:
    rows = await build_chain(db, 5)
    statements = [
        update(audit_log).where(audit_log.c.seq == 3).values(agent_id="mallory"),
        delete(audit_log).where(audit_log.c.seq == 5),
        delete(audit_log),
    ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.write() as tx:
                conn = tx.conn
                await conn.execute(statement)
    if not db.is_sqlite:
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.write() as tx:
                conn = tx.conn
                await conn.exec_driver_sql("TRUNCATE audit_log")
    assert await all_entries(db) == rows
    assert (await verify_database(db)).ok


CHECK_VIOLATIONS = [
    {"agent_id": "system"},
    {"agent_id": ""},
    {"agent_id": "SYSTEM"},
    {"agent_id": "System"},
    {"status": "ok"},
]


async def test_check_constraints_refuse_the_batch_and_leave_the_chain_alone(db: Database) -> None:
    await build_chain(db, 3)
    for appended, bad in enumerate(CHECK_VIOLATIONS):
        before = await head_of(db)
        with pytest.raises(IntegrityError):
            async with db.write() as tx:
                await append_entries(tx, [entry(10), entry(11, **bad), entry(12)])
        assert await head_of(db) == before, bad
        await assert_linear_chain(db, 3 + appended)
        async with db.write() as tx:  # the next append continues the chain without a gap
            assert (await append_entries(tx, [entry(13 + appended)])).seqs == [4 + appended], bad
    await assert_linear_chain(db, 3 + len(CHECK_VIOLATIONS))


async def test_fork_guards_refuse_a_second_successor_and_a_reused_seq(db: Database) -> None:
    rows = await build_chain(db, 4)
    head = await head_of(db)
    second_child = dict(rows[2]) | {"seq": 5, "agent_id": "forker"}  # links to row 2 like row 3
    second_child["entry_hash"] = compute_entry_hash(second_child)
    reused_seq = dict(rows[3]) | {"chain_prev_hash": rows[3]["entry_hash"], "agent_id": "forker"}
    reused_seq["entry_hash"] = compute_entry_hash(reused_seq)
    not_hex = dict(rows[3]) | {"seq": 5, "chain_prev_hash": rows[3]["entry_hash"], "entry_hash": "Z" * 64}
    for forged in (second_child, reused_seq, not_hex):
        with pytest.raises(IntegrityError):
            async with db.write() as tx:
                conn = tx.conn
                await conn.execute(insert(audit_log), [forged])
    assert await head_of(db) == head
    await assert_linear_chain(db, 4)


# -- R6 / R7 through the MCP tools -------------------------------------------------------------

AGENTS = ("claude-lesson-writer-7", "gemini-editor-2", "gpt-reviewer-3")


async def test_r6_r7_every_mutation_is_audited_with_its_agent_and_hashes_chain_per_file(
    db_settings: Settings, db: Database
) -> None:
    server = create_server(db_settings)
    async with AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(client(server, agent=name)) for name in AGENTS]
        expected: list[tuple[str, str, str, str | None]] = []  # agent, operation, status, error
        reads: list[tuple[str, str]] = []  # agent, hash read

        async def mutate(who: Any, agent: str, tool: str, **arguments: Any) -> str | None:
            """Call `tool`; return the new file hash ("" for a delete), or None when refused."""
            try:
                result = await call(who, tool, book_id=BOOK, path=LESSON, **arguments)
            except ToolFailure as failure:
                expected.append((agent, tool, "refused", failure.code))
                return None
            expected.append((agent, tool, "success", None))
            return str(result.get("file_hash", ""))

        async def succeed(who: Any, agent: str, tool: str, **arguments: Any) -> str:
            outcome = await mutate(who, agent, tool, **arguments)
            assert outcome is not None, (agent, tool, arguments)
            return outcome

        async def read(who: Any, agent: str) -> str:
            result = await call(who, "read_content", book_id=BOOK, path=LESSON)
            reads.append((agent, result["file_hash"]))
            return str(result["file_hash"])

        claude, gemini, gpt = AGENTS
        h1 = await succeed(a, claude, "write_content", content="v1")
        assert await read(b, gemini) == h1
        h2 = await succeed(b, gemini, "write_content", content="v2", expected_hash=h1)
        assert await mutate(c, gpt, "write_content", content="stale", expected_hash=h1) is None
        h3 = await succeed(c, gpt, "write_content", content="v3", expected_hash=h2)
        await succeed(a, claude, "delete_content", expected_hash=h3)
        h4 = await succeed(b, gemini, "write_content", content="v4")
        assert await mutate(a, claude, "write_content", content="no hash") is None
        h5 = await succeed(c, gpt, "write_content", content="v5", expected_hash=h4)
        assert await mutate(b, gemini, "delete_content", expected_hash=h1) is None
        h6 = await succeed(a, claude, "write_content", content="v6", expected_hash=h5)
        assert await read(c, gpt) == h6
        assert await read(a, claude) == h6
        assert len(expected) == 10

        # Reads are appended in batches by a background task: wait for them while it runs.
        deadline = time.monotonic() + 5.0
        while True:
            async with db.read() as conn:
                history = await audit_sql.file_history(conn, BOOK, LESSON, "__base__")
            read_entries = [e for e in history if e["operation"] == "read_content"]
            if len(read_entries) >= len(reads) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)

    mutations = [e for e in history if e["operation"] != "read_content"]
    assert [(e["agent_id"], e["operation"], e["status"], e["error_code"]) for e in mutations] == expected
    assert expected[2] == (gpt, "write_content", "refused", "CONFLICT")
    assert expected[6] == (claude, "write_content", "refused", "HASH_REQUIRED")
    assert expected[8] == (gemini, "delete_content", "refused", "CONFLICT")
    assert all(e["agent_id"] in AGENTS for e in history)
    assert all(e["request_id"] and e["execution_time_ms"] >= 0 for e in mutations)

    successes = [e for e in mutations if e["status"] == "success"]
    assert [(e["prev_hash"], e["new_hash"]) for e in successes] == [
        (None, h1),
        (h1, h2),
        (h2, h3),
        (h3, None),
        (None, h4),
        (h4, h5),
        (h5, h6),
    ]
    for before, after in pairwise(successes):
        assert before["new_hash"] == after["prev_hash"], (before["seq"], after["seq"])
    # A refusal records the file's hash at that moment, so the per-file chain holds across them too.
    for before, after in pairwise(mutations):
        assert before["new_hash"] == after["prev_hash"], (before["seq"], after["seq"])
    stale = mutations[2]
    assert (stale["prev_hash"], stale["new_hash"]) == (h2, h2)

    assert sorted(
        (e["agent_id"], e["prev_hash"], e["new_hash"], e["status"]) for e in read_entries
    ) == sorted((agent, h, h, "success") for agent, h in reads)
    report = await verify_database(db)
    assert report.ok, report.as_dict()
    assert report.entries_checked == len(history)
    async with db.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
    assert total == len(history)


async def test_verification_during_live_appends_reports_no_false_tampering(db: Database) -> None:
    """Appends committed while `verify` streams the chain are checked, not flagged as forged."""
    await build_chain(db, 100)
    stop = asyncio.Event()

    async def appender() -> int:
        appended = 0
        while not stop.is_set():
            async with db.write() as tx:
                await append_entries(tx, [entry(1000 + appended, agent="live-writer")])
            appended += 1
            await asyncio.sleep(0)
        return appended

    writers = [asyncio.create_task(appender()) for _ in range(4)]
    try:
        reports = [await verify_database(db) for _ in range(15)]
    finally:
        stop.set()
        appended = sum(await asyncio.gather(*writers))
    assert appended > 0
    assert all(report.ok for report in reports), [r.as_dict() for r in reports if not r.ok]
    final = await verify_database(db)
    assert final.ok and final.entries_checked == 100 + appended
