"""The one-statement commit of an update on PostgreSQL (`db/commit_sql.py`).

The database hashes the audit entry as the chain's verifier does; a refused swap changes
nothing; updates racing each other, write transactions and read-audit batches keep one chain
with every update in it; a statement that committed but whose answer was lost is settled from
the data, not replayed. (One held past the staging deadline: tests/chaos/test_faults.py.)
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from panaversity_fs.app.resources import Resources, open_resources
from panaversity_fs.audit import chain
from panaversity_fs.audit.chain import canonical_bytes, chain_template, compute_entry_hash
from panaversity_fs.audit.trail import Subject
from panaversity_fs.audit.verify import verify_database
from panaversity_fs.db import commit_sql
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.audit_sql import NewAuditEntry, chain_head, stream_entries
from panaversity_fs.db.schema import audit_log
from panaversity_fs.errors import Conflict
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.times import to_utc
from tests.conftest import Backends
from tests.service.test_audit import ENTRIES, HEX64
from tests.support import audit_entry

BOOK = "alone-book"


def _path(n: int) -> str:
    return f"content/01-Alone/01-Commit/{n:02d}-lesson.md"


def _op(name: str = "write_content") -> Operation:
    return Operation(Caller("alone-agent"), name)


@hypothesis_settings(max_examples=300, deadline=None)
@given(made=ENTRIES, seq=st.integers(1, 2**62), prev=HEX64)
def test_the_template_joined_around_the_chain_values_is_the_canonical_serialisation(
    made: NewAuditEntry, seq: int, prev: str
) -> None:
    values = made.values()
    template = chain_template(values)
    assert template is not None
    before, between, after = template
    joined = before + prev.encode() + between + str(seq).encode() + after
    assert joined == canonical_bytes(values | {"seq": seq, "chain_prev_hash": prev})


@pytest.mark.parametrize("field", ["agent_id", "book_id", "path", "user_id", "request_id"])
@pytest.mark.parametrize("mark", [chain._PREV_MARK, chain._SEQ_MARK])  # pyright: ignore[reportPrivateUsage]
@pytest.mark.parametrize("form", ["{}", "x{}y", '"{}"'])
def test_an_entry_holding_a_marker_is_cut_right_or_not_at_all(field: str, mark: str, form: str) -> None:
    """A field holding a marker either leaves the cut right or makes it refused (then the entry
    is appended by a write transaction); a marker where it would be taken for the real value
    (in a field between the two) is refused."""
    values = audit_entry(operation="write_content", request_id="r").values() | {field: form.format(mark)}
    template = chain_template(values)
    if template is not None:
        joined = template[0] + b"0" * 64 + template[1] + b"9" + template[2]
        assert joined == canonical_bytes(values | {"seq": 9, "chain_prev_hash": "0" * 64})
    if mark == chain._PREV_MARK or (field in ("path", "request_id") and form == "{}"):  # pyright: ignore[reportPrivateUsage]
        assert template is None


@pytest.fixture
async def pg(backends: Backends) -> AsyncIterator[Resources]:
    settings = await backends.settings("postgres-fs", database_statement_timeout=10.0)
    async with open_resources(settings, background=False) as resources:
        yield resources


async def _create(resources: Resources, n: int) -> str:
    data = f"# lesson {n}\n".encode()
    outcome = await resources.files.write(_op(), Target(BOOK, _path(n), None), data, sha256_hex(data), None)
    return outcome.file_hash


async def _update(
    resources: Resources, n: int, expected: str, text: str, idem: Idempotency | None = None
) -> Any:
    data = text.encode()
    target = Target(BOOK, _path(n), None)
    return await resources.files.write(_op(), target, data, sha256_hex(data), expected, idem=idem)


async def _entries(resources: Resources, after_seq: int = 0) -> list[dict[str, Any]]:
    async with resources.db.read() as conn:
        return [dict(row) async for row in stream_entries(conn, after_seq=after_seq)]


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(made=ENTRIES, new_hash=HEX64)
async def test_the_database_hashes_the_entry_as_the_verifier_does(
    pg: Resources, made: NewAuditEntry, new_hash: str
) -> None:
    key = journal.FileKey(BOOK, _path(1), "__base__")
    async with pg.db.read() as conn:
        row = (await journal.fetch(conn, BOOK, key.path, ["__base__"])).get("__base__")
    current = row.sha256 if row is not None else await _create(pg, 1)
    assert current is not None
    values = made.values() | {"created_at": to_utc(made.created_at)}
    template = chain_template(values)
    assert template is not None
    swap = journal.cas_parameters(
        key, current, new_hash, 7, f"staged-{new_hash[:8]}", datetime.now(UTC), journal.Author("a"), None
    )
    swapped = await commit_sql.swap_alone(pg.db, key, swap, values, template)
    assert swapped is not None
    (stored,) = await _entries(pg, swapped.seq - 1)
    for name in NewAuditEntry.__dataclass_fields__:
        assert stored[name] == getattr(made, name), name  # byte-exact round trip
    assert compute_entry_hash(stored) == stored["entry_hash"]
    async with pg.db.read() as conn:
        assert await chain_head(conn) == (swapped.seq, stored["entry_hash"])
        row = (await journal.fetch(conn, BOOK, key.path, ["__base__"]))["__base__"]
    assert (row.sha256, row.version, row.staging_key) == (new_hash, swapped.version, swap["v_staging_key"])
    assert (await verify_database(pg.db)).ok


async def test_a_refused_swap_changes_nothing_and_the_write_is_refused_as_before(pg: Resources) -> None:
    current = await _create(pg, 2)
    await pg.trail.recorder.flush()
    async with pg.db.read() as conn:
        head = await chain_head(conn)
    key = journal.FileKey(BOOK, _path(2), "__base__")
    values = audit_entry(operation="write_content", book_id=BOOK, path=key.path).values()
    template = chain_template(values)
    assert template is not None
    swap = journal.cas_parameters(
        key, "f" * 64, "e" * 64, 1, "staged-x", datetime.now(UTC), journal.Author("a"), None
    )
    assert await commit_sql.swap_alone(pg.db, key, swap, values, template) is None
    async with pg.db.read() as conn:
        assert await chain_head(conn) == head
        row = (await journal.fetch(conn, BOOK, key.path, ["__base__"]))["__base__"]
    assert (row.sha256, row.version) == (current, 1)
    # Through the engine a stale hash is refused (before staging) and audited as a refusal.
    with pytest.raises(Conflict):
        await _update(pg, 2, "f" * 64, "# stale\n")
    await pg.trail.recorder.flush()
    statuses = [entry["status"] for entry in await _entries(pg, head[0])]
    assert statuses == ["refused"]


async def test_racing_updates_write_transactions_and_batches_keep_one_chain(pg: Resources) -> None:
    """Four writers race on each of three files (losers re-read and retry), one of them through
    write transactions (an idempotency key), while read entries are batched and new files
    created: every update is committed once, in one chain that verifies."""
    files = 3
    for n in range(files):
        await _create(pg, n)
    await pg.trail.recorder.flush()
    async with pg.db.read() as conn:
        start = (await chain_head(conn))[0]
    won: Counter[int] = Counter()

    async def writer(n: int, w: int) -> None:
        for i in range(8):
            while True:
                async with pg.db.read() as conn:
                    current = (await journal.fetch(conn, BOOK, _path(n), ["__base__"]))["__base__"].sha256
                assert current is not None
                idem = Idempotency("alone-agent", f"k-{n}-{w}-{i}", "write_content", "f") if w == 0 else None
                try:
                    await _update(pg, n, current, f"# {n} by {w}, round {i}\n", idem)
                except Conflict:
                    continue
                won[n] += 1
                break

    async def reader_and_creator() -> None:
        for i in range(20):
            pg.trail.note(_op("read_content"), Subject(BOOK, _path(50 + i)))
            if i % 5 == 0:
                await _create(pg, 10 + i)
            await pg.trail.recorder.flush()

    await asyncio.gather(*(writer(n, w) for n in range(files) for w in range(4)), reader_and_creator())
    assert all(won[n] == 32 for n in range(files)), won
    async with pg.db.read() as conn:
        for n in range(files):
            row = (await journal.fetch(conn, BOOK, _path(n), ["__base__"]))["__base__"]
            assert row.version == 1 + won[n]
        total = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
    entries = await _entries(pg, start)
    updates = Counter(e["path"] for e in entries if e["status"] == "success" and e["prev_hash"] is not None)
    assert all(updates[_path(n)] == won[n] for n in range(files)), updates
    report = await verify_database(pg.db)
    assert report.ok and report.head_seq == total, report.as_dict()


async def test_a_statement_whose_answer_is_lost_is_settled_from_the_data(pg: Resources) -> None:
    """The statement runs once (on another connection, as if it had been sent), then the driver
    fails as if the connection dropped before the answer came: the update is reported, once."""
    current = await _create(pg, 4)
    url = make_url(pg.db.engine.url).set(drivername="postgresql").render_as_string(hide_password=False)
    armed = {"left": 1}

    def run_elsewhere(sql: str, arguments: list[Any]) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.fetch(sql, *arguments)
            finally:
                await conn.close()

        thread = threading.Thread(target=lambda: asyncio.run(run()))
        thread.start()
        thread.join()

    def lose_the_answer(_conn: Any, _cursor: Any, sql: str, arguments: Any, *_rest: Any) -> None:
        if armed["left"] and sql.startswith("WITH cas"):
            armed["left"] = 0
            run_elsewhere(sql, list(arguments))
            raise OperationalError(sql, arguments, ConnectionResetError("answer lost"))

    engine = pg.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", lose_the_answer)
    try:
        outcome = await _update(pg, 4, current, "# answered late\n")
    finally:
        event.remove(engine, "before_cursor_execute", lose_the_answer)
    assert armed["left"] == 0, "the fault was not reached"
    assert (outcome.mode, outcome.version, outcome.previous_hash) == ("updated", 2, current)
    async with pg.db.read() as conn:
        row = (await journal.fetch(conn, BOOK, _path(4), ["__base__"]))["__base__"]
    assert (row.sha256, row.version, row.publish_pending) == (outcome.file_hash, 2, False)
    updates = [e for e in await _entries(pg) if e["path"] == _path(4) and e["status"] == "success"]
    assert len(updates) == 2  # the create and the update, once
    assert (await verify_database(pg.db)).ok


async def test_an_update_whose_entry_cannot_be_cut_commits_in_a_write_transaction(pg: Resources) -> None:
    """An agent id that holds the template's marker: the entry is appended by a write
    transaction instead (the statement never runs), and the chain still verifies."""
    current = await _create(pg, 5)
    marked = Operation(Caller(chain._PREV_MARK), "write_content")  # pyright: ignore[reportPrivateUsage]
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        sent.append(sql.split()[0].upper())

    engine = pg.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        data = b"# marked\n"
        outcome = await pg.files.write(marked, Target(BOOK, _path(5), None), data, sha256_hex(data), current)
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert outcome.version == 2
    # The write transaction's statements (compare-and-swap, chain head, entry + head move), then
    # the publish (which also removes any staged copy: a WITH); the one statement would have been
    # a single WITH before the publish.
    assert sent == ["UPDATE", "SELECT", "WITH", "WITH"], sent
    (entry,) = [e for e in await _entries(pg) if e["agent_id"] == chain._PREV_MARK]  # pyright: ignore[reportPrivateUsage]
    assert (entry["prev_hash"], entry["new_hash"]) == (current, outcome.file_hash)
    assert (await verify_database(pg.db)).ok
