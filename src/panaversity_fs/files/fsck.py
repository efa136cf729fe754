"""Compare the journal with storage, report every disagreement, and repair what can be repaired.

Invariants checked (specs/test-catalogue.md, F1-F4):
- no lost file: every live, published journal row has an object whose sha256 is the row's
  (`missing`, `corrupt`);
- no resurrected file: a published tombstone has no object (`resurrected`);
- no orphan: every object under `books/` has a live journal row (`orphans`);
- no leftover: no committed change still waits for its publish (`pending`), and no staged
  object is left that no journal row references (`stale_staging`);
- no lost version: every retained version has its bytes in the version store
  (`missing_versions`, `book/user/path@version`).

Storage is listed before the journal is read: a write commits its row before its object
appears, so an object listed first cannot be mistaken for an orphan because its row came
later. Anything younger than the grace period (an object, a pending change, a staged upload)
belongs to a write that may still be in flight and is not reported. A hash mismatch is checked
again against a fresh row, so a file rewritten during the check is not called corrupt.

Repair never deletes a journal row and never removes or moves anything younger than the grace
period: it finishes pending publishes (safe at any age, under the row's lock) and removes stale
staging (the recovery sweep), collects the bytes of expired versions, and moves orphaned and resurrected objects to `.pfs/quarantine/`
(each under its row lock where it has a row). Missing and corrupt files cannot be repaired from storage; they are reported for restore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db import publish_sql
from panaversity_fs.db.engine import Database
from panaversity_fs.db.history_sql import Retention
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.versions import VersionStore
from panaversity_fs.paths import BASE_USER, storage_key
from panaversity_fs.storage.blobs import INTERNAL_PREFIX, STAGING_PREFIX, BlobNotFound, BlobStore

logger = logging.getLogger(__name__)

QUARANTINE_PREFIX = f"{INTERNAL_PREFIX}quarantine/"
ROWS_PER_PAGE = 1000
PARALLEL_READS = 8

PROBLEM_KINDS = (
    "missing",
    "corrupt",
    "resurrected",
    "orphans",
    "pending",
    "stale_staging",
    "missing_versions",
)
KEEP_ALL = Retention(datetime.min.replace(tzinfo=UTC), 1)
"""Every version counts as retained (a check without the server's retention settings)."""


def _keys() -> list[str]:
    return []


@dataclass
class FsckReport:
    """Every problem found, by kind (storage keys), and what a repair did."""

    checked_rows: int = 0
    checked_objects: int = 0
    missing: list[str] = field(default_factory=_keys)
    corrupt: list[str] = field(default_factory=_keys)
    resurrected: list[str] = field(default_factory=_keys)
    orphans: list[str] = field(default_factory=_keys)
    pending: list[str] = field(default_factory=_keys)
    stale_staging: list[str] = field(default_factory=_keys)
    missing_versions: list[str] = field(default_factory=_keys)
    young_skipped: int = 0

    @property
    def ok(self) -> bool:
        """Whether journal and storage agree completely."""
        return not any(self.counts().values())

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind."""
        return {kind: len(getattr(self, kind)) for kind in PROBLEM_KINDS}

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked_rows": self.checked_rows,
            "checked_objects": self.checked_objects,
            "young_skipped": self.young_skipped,
            **{kind: getattr(self, kind) for kind in PROBLEM_KINDS},
        }


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What `repair` changed."""

    published: int
    staging_removed: int
    quarantined: list[str]
    skipped: list[str]
    unrepairable: list[str]
    versions_collected: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "published": self.published,
            "staging_removed": self.staging_removed,
            "versions_collected": self.versions_collected,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "unrepairable": self.unrepairable,
        }


async def check(
    db: Database,
    store: BlobStore,
    book_id: str | None = None,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
    retention: Retention = KEEP_ALL,
) -> FsckReport:
    """Check journal against storage (one book, or all) and return what disagrees; versions
    `retention` keeps must have their bytes.

    Raises:
        StorageError: storage failed.
        sqlalchemy errors: the database failed.
    """
    now = now or datetime.now(UTC)
    report = FsckReport()

    def young(moment: datetime | None) -> bool:
        return moment is not None and now - moment < grace

    listed = await store.list(f"books/{book_id}/" if book_id else "books/")
    staged = [] if book_id else await store.list(STAGING_PREFIX)
    present = {blob.key for blob in listed}
    accounted: set[str] = set()
    async for rows in _pages(db, book_id):
        to_hash: list[tuple[str, JournalRow]] = []
        for row in rows:
            report.checked_rows += 1
            key = _key_of(row)
            if row.publish_pending:
                accounted.add(key)  # its object is about to appear or go
                if young(row.pending_since):
                    report.young_skipped += 1
                else:
                    report.pending.append(key)
            elif row.exists:
                accounted.add(key)
                to_hash.append((key, row))
            elif key in present:
                accounted.add(key)
                if await store.exists(key) and not await _changed(db, row):
                    report.resurrected.append(key)
        await _check_hashes(db, store, to_hash, report)
    for blob in listed:
        report.checked_objects += 1
        if blob.key in accounted:
            continue
        if young(blob.last_modified):
            report.young_skipped += 1
        elif await store.exists(blob.key):  # not deleted since the listing
            report.orphans.append(blob.key)
    if staged:
        async with db.read() as conn:
            referenced = await publish_sql.staging_keys_in_use(conn)
        for blob in staged:
            if blob.key in referenced:
                continue
            if young(blob.last_modified):
                report.young_skipped += 1
            else:
                report.stale_staging.append(blob.key)
    await _check_versions(db, store, book_id, retention, report)
    return report


async def _check_versions(
    db: Database, store: BlobStore, book_id: str | None, retention: Retention, report: FsckReport
) -> None:
    """Report retained versions whose bytes are gone (listing first: a version's bytes are stored
    before it commits, so a version committed after the listing has them too)."""
    present = await VersionStore(db, store).present()
    async with db.read() as conn:
        rows = await history.retained(conn, retention)
    for row in rows:
        if book_id is not None and row.book_id != book_id:
            continue
        if row.captured and row.sha256 not in present:
            report.missing_versions.append(f"{row.book_id}/{row.user_id}/{row.path}@{row.version}")


async def repair(
    db: Database,
    store: BlobStore,
    publisher: Publisher,
    report: FsckReport,
    grace: timedelta,
    retention: Retention = KEEP_ALL,
) -> RepairReport:
    """Repair what `report` found, except anything younger than `grace` or unrepairable, and
    collect the bytes of versions `retention` no longer keeps.

    Raises:
        StorageError: storage failed.
        sqlalchemy errors: the database failed.
    """
    swept = await publisher.recover(grace)
    collected = await VersionStore(db, store).collect(retention, grace)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    quarantined: list[str] = []
    skipped: list[str] = []
    for key in [*report.orphans, *report.resurrected]:
        if await _quarantine(db, store, key, f"{QUARANTINE_PREFIX}{stamp}/{key}", grace):
            quarantined.append(key)
        else:
            skipped.append(key)
    if quarantined:
        logger.warning("fsck quarantined objects", extra={"quarantined": len(quarantined), "stamp": stamp})
    return RepairReport(
        published=swept.published,
        staging_removed=swept.orphans_removed,
        quarantined=quarantined,
        skipped=skipped,
        unrepairable=[*report.missing, *report.corrupt, *report.missing_versions],
        versions_collected=collected.removed,
    )


async def _pages(db: Database, book_id: str | None) -> AsyncIterator[list[JournalRow]]:
    after: tuple[str, str, str] | None = None
    while True:
        async with db.read() as conn:
            rows = await journal.rows_page(conn, book_id, after, ROWS_PER_PAGE)
        if not rows:
            return
        yield rows
        last = rows[-1]
        after = (last.book_id, last.user_id, last.path)


async def _check_hashes(
    db: Database, store: BlobStore, rows: list[tuple[str, JournalRow]], report: FsckReport
) -> None:
    gate = asyncio.Semaphore(PARALLEL_READS)

    async def one(key: str, row: JournalRow) -> None:
        async with gate:
            try:
                digest, _size = await store.sha256(key)
            except BlobNotFound:
                if not await _changed(db, row):
                    report.missing.append(key)
                return
            if digest != row.sha256 and not await _changed(db, row):
                report.corrupt.append(key)

    await asyncio.gather(*(one(key, row) for key, row in rows))


async def _changed(db: Database, row: JournalRow) -> bool:
    """Whether the row was rewritten since it was read (a concurrent write, not a problem)."""
    fresh = (await journal.look_up(db, row.book_id, row.path, [row.user_id])).get(row.user_id)
    return fresh is None or (fresh.version, fresh.sha256, fresh.publish_pending) != (
        row.version,
        row.sha256,
        row.publish_pending,
    )


async def _quarantine(db: Database, store: BlobStore, key: str, target: str, grace: timedelta) -> bool:
    """Move an orphaned or resurrected object aside; False if it is young or no longer stray.

    The object is moved under its journal row's lock when it has a row, so it cannot race a
    publish of the same file; it is re-examined right before it moves.
    """
    book_id, user_id, path = _parse_key(key)
    async with db.write() as tx:
        row = await journal.lock(tx.conn, journal.FileKey(book_id, path, user_id)) if path else None
        if row is not None and (row.exists or row.publish_pending):
            return False
        try:
            info = await store.stat(key)
        except BlobNotFound:
            return False
        if info.last_modified is None or datetime.now(UTC) - info.last_modified < grace:
            return False
        await store.copy(key, target)
        await store.delete(key)
    return True


def _key_of(row: JournalRow) -> str:
    return storage_key(row.book_id, row.path, row.user_id)


def _parse_key(key: str) -> tuple[str, str, str | None]:
    """`(book_id, user_id, path)` of a `books/...` key; path None when no tool path maps to it."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "books":
        return "", BASE_USER, None
    if parts[2] == "users" and len(parts) >= 5:
        return parts[1], parts[3], "/".join(parts[4:])
    return parts[1], BASE_USER, "/".join(parts[2:])
