"""`FileReader`: hash-verified reads of journaled files, overlay first."""

from __future__ import annotations

import logging

from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import Internal, NotFound, Unavailable
from panaversity_fs.files.results import FileInfo, FileRead
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.metrics import Metrics
from panaversity_fs.paths import BASE_USER
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError, storage_failure
from panaversity_fs.times import iso

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 4
"""Journal/storage round trips a read makes before it calls a mismatch real."""


class FileReader:
    """Reads a file's current bytes and checks them against its journal row."""

    def __init__(self, db: Database, store: BlobStore, metrics: Metrics) -> None:
        self._db = db
        self._store = store
        self._metrics = metrics

    async def read(self, target: Target) -> FileRead:
        """Return the file `target` names: the user's live overlay, else the live base file.

        Raises:
            NotFound: neither exists.
            Unavailable: the database or storage failed, or the file kept changing; retry.
            Internal: the stored bytes do not match an unchanging journal row (run fsck).
        """
        bases: dict[str, str | None] = {}
        found = await self.follow(target.book_id, target.path, target.user_id, bases=bases)
        if found is None:
            raise NotFound(f"{target.path} does not exist: glob_search finds files", path=target.path)
        row, data = found
        return _file_content(target, row, data, bases.get("hash"))

    async def follow(
        self,
        book_id: str,
        path: str,
        user_id: str | None,
        row: JournalRow | None = None,
        bases: dict[str, str | None] | None = None,
    ) -> tuple[JournalRow, bytes] | None:
        """Return the visible row of a file (for `user_id`) with its verified bytes, starting from
        `row` when the caller already listed it; None if no live row is visible. `bases`, when
        given, receives the base file's current hash under `hash` (from the last lookup).

        Bytes that do not match their row mean the file changed under the read: its row is
        looked up again, up to `READ_ATTEMPTS` reads in all.

        Raises:
            Unavailable: the database or storage failed, or the file kept changing; retry.
            Internal: the stored bytes do not match an unchanging journal row (run fsck).
        """
        users = [user_id, BASE_USER] if user_id else [BASE_USER]
        versions_seen: set[tuple[str, int]] = set()
        for _ in range(READ_ATTEMPTS):
            if row is None:
                try:
                    rows = await journal.look_up(self._db, book_id, path, users)
                except DB_ERRORS as exc:
                    raise database_failure(exc) from None
                row = journal.visible(rows, user_id)
                if bases is not None:
                    base = rows.get(BASE_USER)
                    bases["hash"] = base.sha256 if base is not None else None
                if row is None:
                    return None
            data = await self.verified_bytes(row)
            if data is not None:
                return row, data
            versions_seen.add((row.user_id, row.version))
            row = None
        if len(versions_seen) == 1:
            self._metrics.journal_storage_mismatch_total.inc()
            logger.error("stored bytes do not match the journal", extra={"book_id": book_id, "path": path})
            raise Internal("stored bytes do not match the journal; an operator should run fsck")
        raise Unavailable("the file changed during the read; retry", path=path)

    async def verified_bytes(self, row: JournalRow) -> bytes | None:
        """Return the bytes of a journal row if they match its hash, else None (changed or lost).

        The pending staging key is tried first, so a committed but unpublished write is served.

        Raises:
            Unavailable: storage failed.
        """
        for key in row.object_keys:
            try:
                data = await self._store.read(key, row.size)
            except BlobNotFound:
                continue
            except StorageError as exc:
                raise storage_failure(exc) from None
            return data if sha256_hex(data) == row.sha256 else None
        return None


def _file_content(target: Target, row: JournalRow, data: bytes, base_hash: str | None) -> FileRead:
    overlay = row.source == "overlay"
    info = FileInfo(
        book_id=target.book_id,
        path=target.path,
        file_hash=row.sha256 or "",
        size=len(data),
        version=row.version,
        last_modified=iso(row.last_written_at),
        source=row.source,
        user_id=target.user_id,
        base_hash=base_hash if overlay else None,
        base_changed=(base_hash != row.base_sha256) if overlay else None,
    )
    return FileRead(info, data.decode("utf-8", errors="surrogateescape"))
