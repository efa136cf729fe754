"""C-1: fail the k-th storage or database operation of each mutation, once and forever.

For every k until the mutation completes without reaching the fault: after the fault is lifted
and recovery has run, the journal matches storage, the audit chain verifies, and the operation
reported success if and only if its journal change committed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from panaversity_fs.app.resources import build
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.audit.verify import verify_database
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.audit_sql import file_history
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import file_journal, staged_copy
from panaversity_fs.errors import PanaversityFSError, Unavailable
from panaversity_fs.files.fsck import check
from panaversity_fs.metrics import Metrics
from panaversity_fs.storage.blobs import BlobStore, StorageError
from tests.conftest import PAIRS, Backends
from tests.support import op

_T = TypeVar("_T")
AGENT = "fault-injector"
BOOK = "fault-book"


class Injected(Exception):
    """Marker: this failure was injected."""


class FaultPlan:
    """Counts storage and database operations and fails the k-th one (and later ones, forever)."""

    def __init__(self) -> None:
        self.k: int | None = None
        self.kinds: frozenset[str] = frozenset({"storage", "database"})
        self.forever = False
        self.count = 0
        self.fired = False

    def arm(self, k: int, forever: bool, kinds: frozenset[str] = frozenset({"storage", "database"})) -> None:
        self.k, self.forever, self.kinds, self.count, self.fired = k, forever, kinds, 0, False

    def disarm(self) -> None:
        self.k = None

    def tick(self, kind: str) -> bool:
        if self.k is None or kind not in self.kinds:
            return False
        self.count += 1
        if self.count == self.k or (self.forever and self.count > self.k):
            self.fired = True
            return True
        return False


class FaultyStore(BlobStore):
    plan: FaultPlan

    async def _run(self, fn: Callable[[], _T], undo: Callable[[], None] | None = None) -> _T:
        if self.plan.tick("storage"):
            if undo is not None:
                undo()
            raise StorageError("injected storage fault")
        return await super()._run(fn, undo)

    def _here(self, fn: Callable[[], _T]) -> _T:
        if self.plan.tick("storage"):
            raise StorageError("injected storage fault")
        return super()._here(fn)


def _instrument(db: Database, plan: FaultPlan) -> None:
    def fail() -> None:
        raise OperationalError("injected", None, Injected("injected database fault"))

    def _before(*_args: Any) -> None:
        if plan.tick("database"):
            fail()

    def _commit(*_args: Any) -> None:
        if plan.tick("database"):
            fail()

    for engine in db.transaction_engines:
        event.listen(engine, "before_cursor_execute", _before)
        event.listen(engine, "commit", _commit)


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.plan = FaultPlan()
        self.db = Database.from_settings(settings)
        _instrument(self.db, self.plan)
        plain = BlobStore.from_settings(settings)
        plain.close()
        self.store = FaultyStore(plain._operator, settings.storage_backend, 4, 30, plain.local)
        self.store.plan = self.plan
        metrics = Metrics()
        resources = build(settings, self.db, self.store, metrics, AuditRecorder(self.db, 0.01))
        self.publisher = resources.publisher
        self.service = resources.lessons
        # What `open_resources` learns at start-up: a fresh database has no version to capture.
        resources.versions.capture_pending = False

    async def row(self, path: str, user: str = "__base__") -> journal.JournalRow | None:
        async with self.db.read() as conn:
            return (await journal.fetch(conn, BOOK, path, [user])).get(user)

    async def copies(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(staged_copy))).scalar_one())

    async def close(self) -> None:
        self.store.close()
        await self.db.dispose()


def _path(n: int) -> str:
    return f"content/01-Faults/01-Sweep/{n % 100:02d}-case-{n}.md"


Setup = Callable[[Rig, str], Awaitable[str | None]]
Action = Callable[[Rig, str, str | None], Awaitable[Any]]


async def _nothing(_rig: Rig, _path: str) -> str | None:
    return None


async def _existing(rig: Rig, path: str) -> str | None:
    return (await rig.service.write(op("write_content", AGENT), BOOK, path, "old content")).file_hash


async def _create(rig: Rig, path: str, _hash: str | None) -> Any:
    return await rig.service.write(op("write_content", AGENT), BOOK, path, "new content")


async def _update(rig: Rig, path: str, current: str | None) -> Any:
    return await rig.service.write(
        op("write_content", AGENT), BOOK, path, "new content", expected_hash=current
    )


async def _overlay(rig: Rig, path: str, _hash: str | None) -> Any:
    return await rig.service.write(op("write_content", AGENT), BOOK, path, "new content", user_id="u1")


async def _delete(rig: Rig, path: str, _hash: str | None) -> Any:
    return await rig.service.delete(op("delete_content", AGENT), BOOK, path)


CASES: dict[str, tuple[Setup, Action, str]] = {
    "create": (_nothing, _create, "written"),
    "update": (_existing, _update, "written"),
    "overlay-create": (_existing, _overlay, "overlay"),
    "delete": (_existing, _delete, "deleted"),
}


@pytest.mark.parametrize("forever", [False, True], ids=["once", "forever"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("combo", PAIRS)
async def test_fault_sweep(backends: Backends, combo: str, case: str, forever: bool) -> None:
    await _sweep(backends, combo, case, forever)


@pytest.mark.parametrize("forever", [False, True], ids=["once", "forever"])
async def test_fault_sweep_of_an_update_kept_as_a_staged_copy(backends: Backends, forever: bool) -> None:
    """PostgreSQL on a folder: the update is staged without a sync, its commit keeps a copy of
    the bytes, and its publish syncs the staged file and drops the copy."""
    await _sweep(backends, "postgres-fs", "update", forever)


async def _sweep(backends: Backends, combo: str, case: str, forever: bool) -> None:
    settings = await backends.settings(combo)
    rig = Rig(settings)
    setup, action, effect = CASES[case]
    new_hash = hashlib.sha256(b"new content").hexdigest()
    try:
        k = 0
        while True:
            k += 1
            assert k < 60, "the sweep did not converge"
            path = _path(k)
            before = await setup(rig, path)
            rig.plan.arm(k, forever)
            try:
                await action(rig, path, before)
                succeeded = True
            except PanaversityFSError as error:
                assert error.code == "UNAVAILABLE", error.to_dict()
                succeeded = False
            finally:
                rig.plan.disarm()
            fired = rig.plan.fired
            await rig.publisher.recover(timedelta(0), now=datetime.now(UTC) + timedelta(minutes=10))
            user = "u1" if effect == "overlay" else "__base__"
            row = await rig.row(path, user)
            if effect == "deleted":
                committed = row is not None and row.sha256 is None
            else:
                committed = row is not None and row.sha256 == new_hash
            assert succeeded == committed, f"k={k}: reported success={succeeded}, committed={committed}"
            if effect == "overlay":
                base = await rig.row(path)
                assert base is not None and base.sha256 == before, "overlay write touched base"
            report = await check(rig.db, rig.store)
            assert report.ok, (k, report.as_dict())
            assert await rig.copies() == 0, f"k={k}: a staged copy outlived its publish"
            if not fired:
                break
        assert k > 2, "the fault never fired: the sweep tested nothing"
        chain = await verify_database(rig.db)
        assert chain.ok, chain.as_dict()
    finally:
        await rig.close()


async def test_reads_never_see_a_pending_write_torn(backends: Backends) -> None:
    """A committed write whose publish failed is served from staging, hash-verified."""
    settings = await backends.settings("sqlite-fs")
    rig = Rig(settings)
    try:
        path = _path(1)
        old = await _existing(rig, path)
        # Count the storage calls of a whole write (a fault never fires that late): the last
        # one is its publish.
        rig.plan.arm(10_000, True, frozenset({"storage"}))
        await _existing(rig, _path(2))
        calls = rig.plan.count
        rig.plan.arm(calls, True, frozenset({"storage"}))  # staging works; publishing fails
        try:
            outcome = await rig.service.write(
                op("write_content", AGENT), BOOK, path, "new content", expected_hash=old
            )
        finally:
            rig.plan.disarm()
        row = await rig.row(path)
        assert row is not None and row.publish_pending, "the publish should have been left pending"
        read = await rig.service.read(op("read_content", AGENT), BOOK, path)
        assert read.text == "new content" and read.info.file_hash == outcome.file_hash
        await rig.publisher.recover(timedelta(0), now=datetime.now(UTC) + timedelta(minutes=10))
        assert (await check(rig.db, rig.store)).ok
    finally:
        await rig.close()


def lose_commit_answers(rig: Rig) -> dict[str, int]:
    """Make the next COMMIT of `rig`'s database happen, then fail as if its answer was lost,
    once `left` is set to 1 in the returned dict (it is 0 again once that happened)."""
    armed = {"left": 0}

    def _commit_then_fail(conn: Any) -> None:
        if armed["left"] == 1:
            armed["left"] = 0
            conn.connection.dbapi_connection.commit()
            raise OperationalError("COMMIT", None, Injected("connection lost after commit"))

    for engine in rig.db.transaction_engines:
        event.listen(engine, "commit", _commit_then_fail)
    return armed


@pytest.mark.parametrize("combo", PAIRS)
async def test_commit_that_fails_after_committing_is_resolved_not_replayed(
    backends: Backends, combo: str
) -> None:
    """The database commits, then the client sees an error (e.g. the connection dropped)."""
    settings = await backends.settings(combo)
    rig = Rig(settings)
    armed = lose_commit_answers(rig)

    try:
        for mode, expected_mode in (("create", "created"), ("update", "updated")):
            path = _path(1 if mode == "create" else 2)
            current = None if mode == "create" else await _existing(rig, path)
            armed["left"] = 1
            outcome = await rig.service.write(
                op("write_content", AGENT), BOOK, path, "after commit", expected_hash=current
            )
            assert armed["left"] == 0, "the fault was not reached"
            assert outcome.mode == expected_mode
            row = await rig.row(path)
            assert row is not None and row.sha256 == outcome.file_hash and not row.publish_pending
            async with rig.db.read() as conn:
                history = await file_history(conn, BOOK, path, "__base__")
            assert [e["status"] for e in history].count("success") == (1 if mode == "create" else 2)
        assert (await check(rig.db, rig.store)).ok
        assert (await verify_database(rig.db)).ok
    finally:
        await rig.close()


async def test_a_delete_whose_commit_answer_is_lost_is_settled_not_reported_failed(
    backends: Backends,
) -> None:
    """PostgreSQL commits a delete, then the client loses the answer (its server restarted, the
    connection dropped): the delete asks the database how its transaction ended, as a write does,
    instead of answering UNAVAILABLE for a delete that happened (the crash campaign found it).
    On SQLite a COMMIT that fails did not commit: no answer is lost there."""
    rig = Rig(await backends.settings("postgres-s3"))
    armed = lose_commit_answers(rig)
    try:
        path = _path(3)
        await _existing(rig, path)
        armed["left"] = 1
        outcome = await rig.service.delete(op("delete_content", AGENT), BOOK, path)
        assert armed["left"] == 0, "the fault was not reached"
        assert outcome.existed
        row = await rig.row(path)
        assert row is not None and row.sha256 is None and not row.publish_pending
        assert (await check(rig.db, rig.store)).ok
        assert (await verify_database(rig.db)).ok
    finally:
        await rig.close()


async def test_a_commit_delayed_past_the_staging_deadline_writes_nothing(backends: Backends) -> None:
    """Lock waits can push a commit past the age at which recovery may remove its staged bytes
    (half the grace period): such a write is rolled back, answered UNAVAILABLE, and audited."""
    settings = await backends.settings("postgres-fs", recovery_grace=2.0)
    rig = Rig(settings)
    path = _path(7)
    try:
        current = await _existing(rig, path)
        blocker = await rig.db.engine.connect()
        transaction = await blocker.begin()
        await blocker.execute(
            select(file_journal.c.version).where(file_journal.c.path == path).with_for_update()
        )

        async def release_later() -> None:
            await asyncio.sleep(1.6)  # longer than the 1 s staging deadline
            await transaction.rollback()
            await blocker.close()

        releaser = asyncio.create_task(release_later())
        with pytest.raises(Unavailable, match="waited too long"):
            await rig.service.write(
                op("write_content", AGENT), BOOK, path, "late content", expected_hash=current
            )
        await releaser
        row = await rig.row(path)
        assert row is not None and row.sha256 == current and not row.publish_pending
        async with rig.db.read() as conn:
            history = await file_history(conn, BOOK, path, "__base__")
        assert [(e["status"], e["error_code"]) for e in history][-1] == ("error", "UNAVAILABLE")
        assert (await check(rig.db, rig.store)).ok
        # On PostgreSQL the update was one statement, cancelled at the deadline: the pool is
        # sound afterwards and the next update commits.
        assert (await _update(rig, path, current)).version == 2
        assert (await verify_database(rig.db)).ok
    finally:
        await rig.close()
