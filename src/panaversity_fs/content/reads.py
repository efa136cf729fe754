"""`FileReader`: hash-verified reads of journaled files, overlay first."""

from __future__ import annotations

import logging

from panaversity_fs.content.entries import DB_ERRORS, unavailable
from panaversity_fs.content.results import FileContent
from panaversity_fs.content.target import Target, sha256_hex
from panaversity_fs.errors import Internal, NotFound, Unavailable
from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.engine import Database
from panaversity_fs.journal.repository import JournalRow
from panaversity_fs.metrics import Metrics
from panaversity_fs.paths import BASE_USER, storage_key
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 4
"""Journal/storage round trips a read makes before it calls a mismatch real."""


class FileReader:
    """Reads a file's current bytes and checks them against its journal row."""

    def __init__(self, db: Database, store: BlobStore, metrics: Metrics) -> None:
        self._db = db
        self._store = store
        self._metrics = metrics

    async def resolved(self, target: Target) -> FileContent:
        """Return the file `target` names: the user's live overlay, else the live base file.

        Raises:
            NotFound: neither exists.
            Unavailable: the database or storage failed, or the file kept changing; retry.
            Internal: the stored bytes do not match an unchanging journal row (run fsck).
        """
        users = [target.user_id, BASE_USER] if target.user_id else [BASE_USER]
        versions_seen: set[tuple[str, int]] = set()
        for _ in range(READ_ATTEMPTS):
            try:
                async with self._db.read() as conn:
                    rows = await journal.fetch(conn, target.book_id, target.path, users)
            except DB_ERRORS as exc:
                raise unavailable("database", exc) from None
            row = journal.visible(rows, target.user_id)
            if row is None:
                raise NotFound(f"{target.path} does not exist", path=target.path)
            data = await self._read_row_bytes(row)
            if data is not None and sha256_hex(data) == row.sha256:
                return _file_content(target, row, data)
            versions_seen.add((row.user_id, row.version))
        if len(versions_seen) == 1:
            self._metrics.journal_storage_mismatch_total.inc()
            logger.error(
                "stored bytes do not match the journal",
                extra={"book_id": target.book_id, "path": target.path},
            )
            raise Internal("stored bytes do not match the journal; an operator should run fsck")
        raise Unavailable("the file changed during the read; retry", path=target.path)

    async def fetch_bytes(self, row: JournalRow) -> bytes | None:
        """Return the bytes of a journal row if they match its hash, else None (changed or lost).

        The pending staging key is tried first, so a committed but unpublished write is served.

        Raises:
            Unavailable: storage failed.
        """
        data = await self._read_row_bytes(row)
        return data if data is not None and sha256_hex(data) == row.sha256 else None

    async def _read_row_bytes(self, row: JournalRow) -> bytes | None:
        final_key = storage_key(row.book_id, row.path, row.user_id)
        candidates = [final_key]
        if row.publish_pending and row.staging_key:
            candidates.insert(0, row.staging_key)
        for key in candidates:
            try:
                return await self._store.read(key)
            except BlobNotFound:
                continue
            except StorageError as exc:
                raise unavailable("storage", exc) from None
        return None


def _file_content(target: Target, row: JournalRow, data: bytes) -> FileContent:
    source = "overlay" if row.user_id != BASE_USER else "base"
    digest = row.sha256 or ""
    return FileContent(
        book_id=target.book_id,
        path=target.path,
        content=data.decode("utf-8", errors="surrogateescape"),
        file_hash=digest,
        file_hash_sha256=digest,
        size=len(data),
        last_modified=row.last_written_at.isoformat(),
        version=row.version,
        user_id=target.user_id,
        source=source,  # type: ignore[arg-type]
        namespace=source,  # type: ignore[arg-type]
    )
