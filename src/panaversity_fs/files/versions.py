"""`VersionStore`: the bytes of every retained version, stored once per sha256.

Layout: `.pfs/versions/{sha[:2]}/{sha}`, beside the path-addressed `books/...` objects (which
keep holding each file's current bytes, as before history existed). A write puts its bytes here
while it stages them, before its commit, so a committed version always has its bytes; identical
bytes share one object.

Collection (fsck repair, the periodic check) removes objects no retained version refers to.
It never races a write of the same bytes: a writer rewrites the object (fresh modification
time) before it commits, and commits within half the recovery grace or not at all, so an object
older than the grace whose hash no retained version refers to, checked again just before the
delete, cannot belong to a commit still to come.

Capture: the upgrade that introduced history recorded each file's current version without
bytes (`captured` false). `capture_all` copies them in after start-up; until it is done, a write
first captures the version it is about to replace (`capture_before_change`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from panaversity_fs.config import Settings
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.db.history_sql import Retention, VersionRow
from panaversity_fs.db.journal_sql import FileKey
from panaversity_fs.files.target import sha256_hex
from panaversity_fs.storage.blobs import INTERNAL_PREFIX, BlobNotFound, BlobStore

logger = logging.getLogger(__name__)

VERSIONS_PREFIX = f"{INTERNAL_PREFIX}versions/"


def retention_of(settings: Settings, now: datetime | None = None) -> Retention:
    """The retention the settings ask for, as of `now`."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.history_days)
    return Retention(cutoff, settings.history_min_versions)


def version_key(sha256: str) -> str:
    """The storage key of the bytes whose hash is `sha256`."""
    return f"{VERSIONS_PREFIX}{sha256[:2]}/{sha256}"


@dataclass(frozen=True, slots=True)
class Collection:
    """What one collection pass found and removed."""

    expired: int
    removed: int
    young_skipped: int


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

    async def keep_object(self, sha256: str, source: str) -> None:
        """Copy the object at `source` (bytes whose hash is `sha256`) into the version store.

        Raises:
            BlobNotFound: no object at `source`.
            StorageError: storage failed.
        """
        await self._store.copy(source, version_key(sha256))

    async def read(self, sha256: str) -> bytes | None:
        """Return the bytes whose hash is `sha256`, or None if they are not (or no longer) kept
        intact.

        Raises:
            StorageError: storage failed.
        """
        try:
            data = await self._store.read(version_key(sha256))
        except BlobNotFound:
            return None
        return data if sha256_hex(data) == sha256 else None

    async def present(self) -> set[str]:
        """Return the hashes whose bytes are in the version store.

        Raises:
            StorageError: storage failed.
        """
        return {blob.key.rsplit("/", 1)[-1] for blob in await self._store.list(VERSIONS_PREFIX)}

    async def collect(
        self, retention: Retention, grace: timedelta, now: datetime | None = None
    ) -> Collection:
        """Remove the bytes no retained version refers to, except objects younger than `grace`.

        Raises:
            StorageError: storage failed.
            sqlalchemy errors: the database failed.
        """
        now = now or datetime.now(UTC)
        async with self._db.read() as conn:
            expired = await history.expired_hashes(conn, retention)
        if not expired:
            return Collection(0, 0, 0)
        old: list[str] = []
        young = 0
        for sha in sorted(expired):
            try:
                info = await self._store.stat(version_key(sha))
            except BlobNotFound:
                continue
            if info.last_modified is not None and now - info.last_modified < grace:
                young += 1
            else:
                old.append(sha)
        async with self._db.read() as conn:
            still = await history.retained_among(conn, retention, old)
        removed = 0
        for sha in old:
            if sha in still:
                continue
            await self._store.delete(version_key(sha))
            removed += 1
        if removed:
            logger.info("collected expired versions", extra={"removed": removed})
        return Collection(len(expired), removed, young)

    async def capture_before_change(self, key: FileKey) -> None:
        """Copy in the bytes of `key`'s version recorded by the upgrade, if still uncaptured.

        Raises:
            StorageError: storage failed.
            sqlalchemy errors: the database failed.
        """
        if not self.capture_pending:
            return
        async with self._db.read() as conn:
            rows = await history.uncaptured(conn, 1, key)
        for row in rows:
            await self._capture(row)

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
        async with self._db.read() as conn:
            current = (await journal.fetch(conn, row.book_id, row.path, [row.user_id])).get(row.user_id)
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
