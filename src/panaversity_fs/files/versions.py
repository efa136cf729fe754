"""`VersionStore`: the bytes of every retained version, stored once per sha256.

Layout: `.pfs/versions/{sha[:2]}/{sha}`, beside the path-addressed `books/...` objects (which
keep holding each file's current bytes, as before history existed). A write puts its bytes here
while it stages them, before its commit, so a committed version always has its bytes; identical
bytes share one object.

Collection (fsck repair, the periodic check) removes the bytes no retained version refers to,
without racing a write of the same bytes. A writer rewrites the object (a fresh modification
time) before it commits, and commits within half the recovery grace of that or not at all. So
collection skips objects younger than the grace, and moves the others aside
(`.pfs/versions-set-aside/{time}-{sha}`) rather than deleting them; a later pass, at least half
a grace on, deletes what is still unreferenced and puts back what a write committed meanwhile.
Reads find set-aside bytes too.

Capture: the upgrade that introduced history recorded each file's current version without
bytes (`captured` false). `capture_all` copies them in after start-up; until it is done, a write
first captures the version it is about to replace (`capture_before_change`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from panaversity_fs.arguments import check_time
from panaversity_fs.config import Settings
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.history_sql import Retention, VersionRow
from panaversity_fs.db.journal_sql import FileKey
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.target import sha256_hex
from panaversity_fs.paths import VERSIONS_PREFIX, version_key
from panaversity_fs.storage.blobs import INTERNAL_PREFIX, BlobNotFound, BlobStore

logger = logging.getLogger(__name__)


def check_as_of(value: object, settings: Settings) -> datetime | None:
    """Return the time `value` names (None for None) if the history still covers it.

    Raises:
        InvalidArgument: it is not an ISO-8601 time with a timezone, or is older than retention.
    """
    if value is None:
        return None
    moment = check_time("as_of", value)
    if moment < retention_of(settings).cutoff:
        raise InvalidArgument(
            f"as_of is older than the {settings.history_days:g}-day history: pick a later time",
            field="as_of",
        )
    return moment


def retention_of(settings: Settings, now: datetime | None = None) -> Retention:
    """The retention the settings ask for, as of `now`."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.history_days)
    return Retention(cutoff, settings.history_min_versions)


@dataclass(frozen=True, slots=True)
class Collection:
    """What one collection pass removed, and the unreferenced objects it left for being young."""

    removed: int
    young_skipped: int


QUERY_BATCH = 500
"""Hashes asked about in one query."""

SET_ASIDE_PREFIX = f"{INTERNAL_PREFIX}versions-set-aside/"
"""Where collection moves bytes it is about to delete: `{unix time}-{sha256}`."""


class VersionStore:
    """Keeps, reads and collects the bytes of versions."""

    def __init__(self, db: Database, store: BlobStore) -> None:
        self._db = db
        self._store = store
        self.capture_pending = True
        """Whether versions recorded by the upgrade may still lack their bytes."""

    async def keep(self, sha256: str, data: bytes) -> None:
        """Store `data` (whose hash is `sha256`) as a version's bytes.

        Raises:
            StorageError: storage failed.
        """
        await self._store.write(version_key(sha256), data)

    async def stage(self, staging_key: str, sha256: str, data: bytes, durable: bool = True) -> None:
        """Store a write's `data` at its staging key and as a version's bytes, in one storage call;
        not `durable`: without waiting for the disk (the caller's commit keeps a copy, and the
        publish syncs the staged file, which the version object shares on a local folder).

        Raises:
            StorageError: storage failed.
        """
        items = [(staging_key, data), (version_key(sha256), data)]
        await self._store.write_all(items, fresh={staging_key}, durable=durable)

    async def keep_object(self, sha256: str, source: str) -> None:
        """Copy the object at `source` (bytes whose hash is `sha256`) into the version store.

        Raises:
            BlobNotFound: no object at `source`.
            StorageError: storage failed.
        """
        await self._store.copy(source, version_key(sha256))

    async def read(self, sha256: str) -> bytes | None:
        """Return the bytes whose hash is `sha256`, or None if they are not (or no longer) kept
        intact (bytes set aside by a collection still count).

        Raises:
            StorageError: storage failed.
        """
        keys = [version_key(sha256)]
        for key in keys:
            try:
                data = await self._store.read(key)
            except BlobNotFound:
                if len(keys) == 1:
                    keys += [
                        blob.key
                        for blob in await self._store.list(SET_ASIDE_PREFIX)
                        if blob.key.endswith(sha256)
                    ]
                continue
            if sha256_hex(data) == sha256:
                return data
        return None

    async def present(self) -> set[str]:
        """Return the hashes whose bytes are in the version store (or set aside by a collection).

        Raises:
            StorageError: storage failed.
        """
        kept = {blob.key.rsplit("/", 1)[-1] for blob in await self._store.list(VERSIONS_PREFIX)}
        aside = {blob.key.rsplit("-", 1)[-1] for blob in await self._store.list(SET_ASIDE_PREFIX)}
        return kept | aside

    async def collect(
        self, retention: Retention, grace: timedelta, now: datetime | None = None
    ) -> Collection:
        """Remove the bytes no retained version refers to (expired versions, and bytes of writes
        that never committed), in two steps a grace period apart (see the module docstring).

        Raises:
            StorageError: storage failed.
            sqlalchemy errors: the database failed.
        """
        now = now or datetime.now(UTC)
        young = 0
        old: dict[str, str] = {}
        for blob in await self._store.list(VERSIONS_PREFIX):
            if blob.last_modified is not None and now - blob.last_modified < grace:
                young += 1
            else:
                old[blob.key.rsplit("/", 1)[-1]] = blob.key
        hashes = sorted(old)
        for start in range(0, len(hashes), QUERY_BATCH):
            batch = hashes[start : start + QUERY_BATCH]
            async with self._db.read() as conn:
                kept = await history.retained_among(conn, retention, batch)
            for sha in batch:
                if sha not in kept:
                    # Set aside, not deleted: a write of these bytes may still commit (see above).
                    await self._store.copy(old[sha], f"{SET_ASIDE_PREFIX}{int(now.timestamp())}-{sha}")
                    await self._store.delete(old[sha])
        return Collection(await self._settle_set_aside(retention, grace, now), young)

    async def _settle_set_aside(self, retention: Retention, grace: timedelta, now: datetime) -> int:
        """Delete the bytes set aside at least half a grace ago that no retained version refers
        to; put back those a write committed meanwhile. Return how many were deleted."""
        removed = 0
        for blob in await self._store.list(SET_ASIDE_PREFIX):
            stamp, _, sha = blob.key.rsplit("/", 1)[-1].partition("-")
            if not stamp.isdigit() or now - datetime.fromtimestamp(int(stamp), UTC) < grace / 2:
                continue
            async with self._db.read() as conn:
                wanted = bool(await history.retained_among(conn, retention, [sha]))
            if wanted and not await self._store.exists(version_key(sha)):
                await self._store.copy(blob.key, version_key(sha))
            await self._store.delete(blob.key)
            removed += 0 if wanted else 1
        if removed:
            logger.info("collected version bytes", extra={"removed": removed})
        return removed

    async def start(self) -> None:
        """Learn whether versions recorded by the upgrade still lack their bytes (one query); a
        failure leaves `capture_pending` set, which is always safe.

        Raises:
            sqlalchemy errors: the database failed.
        """
        async with self._db.read() as conn:
            self.capture_pending = bool(await history.uncaptured(conn, 1))

    async def capture_before_change(self, key: FileKey) -> None:
        """Copy in the bytes of `key`'s version recorded by the upgrade, if still uncaptured.

        Raises:
            StorageError: storage failed.
            Unavailable: the database failed.
        """
        if not self.capture_pending:
            return
        try:
            async with self._db.read() as conn:
                rows = await history.uncaptured(conn, 1, key)
            for row in rows:
                await self._capture(row)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None

    async def capture_all(self, batch: int = 200) -> int:
        """Copy in the bytes of every version recorded by the upgrade; return how many.

        Raises:
            StorageError: storage failed.
            sqlalchemy errors: the database failed.
        """
        captured = 0
        skipped: set[tuple[str, str, str, int]] = set()
        while True:
            async with self._db.read() as conn:
                rows = await history.uncaptured(conn, batch + len(skipped))
            rows = [row for row in rows if _ident(row) not in skipped]
            if not rows:
                break
            for row in rows:
                if await self._capture(row):
                    captured += 1
                else:
                    skipped.add(_ident(row))
        self.capture_pending = bool(skipped)
        if skipped:
            logger.error("versions whose bytes were lost before capture", extra={"count": len(skipped)})
        return captured

    async def _capture(self, row: VersionRow) -> bool:
        """Copy the current bytes of `row`'s file in if they are `row`'s; mark it captured."""
        current = (await journal.look_up(self._db, row.book_id, row.path, [row.user_id])).get(row.user_id)
        if current is None or current.sha256 != row.sha256 or row.sha256 is None:
            return False
        for source in current.object_keys:
            try:
                data = await self._store.read(source)
            except BlobNotFound:
                continue
            if sha256_hex(data) == row.sha256:
                await self.keep(row.sha256, data)
                async with self._db.write() as tx:
                    await history.mark_captured(tx.conn, row.key, row.version)
                return True
        return False


def _ident(row: VersionRow) -> tuple[str, str, str, int]:
    return (row.book_id, row.user_id, row.path, row.version)
