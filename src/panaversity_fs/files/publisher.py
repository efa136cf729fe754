"""Publishing committed changes to their final keys, and recovering abandoned ones.

A write commits its journal row with `publish_pending` and the staging key holding its bytes;
publishing then moves the bytes to the path-addressed key (or, for a delete, removes the
object) under the row's lock, so two publishes of one file never interleave. Any process may
publish any pending row: the writer does it right after its commit, and recovery (at start-up
and periodically) finishes whatever a crashed or failed writer left behind.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from panaversity_fs.db import publish_sql
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.db.journal_sql import FileKey
from panaversity_fs.files.target import sha256_hex
from panaversity_fs.metrics import Metrics
from panaversity_fs.paths import storage_key, version_key
from panaversity_fs.storage.blobs import (
    STAGING_PREFIX,
    UPLOAD_PREFIX,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StorageError,
    upload_expiry,
)

logger = logging.getLogger(__name__)

PUBLISH_RETRY_AFTER = timedelta(seconds=5)
"""A pending publish older than this (or than the sweep's grace, if smaller) is taken over by
recovery: its writer is slow or gone. Publishing is safe at any age, since it runs under the
row's lock and checks the staging key, so the wait only saves duplicated work."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What one recovery sweep did."""

    published: int
    failed: int
    orphans_removed: int
    uploads_removed: int = 0
    copies_removed: int = 0
    """Staged copies whose change was replaced before its publish."""


class Publisher:
    """Moves committed bytes into place and cleans up after writers that did not."""

    def __init__(self, db: Database, store: BlobStore, metrics: Metrics) -> None:
        self._db = db
        self._store = store
        self._metrics = metrics

    async def publish(self, key: FileKey, staging_key: str | None, synced: bool = False) -> bool:
        """Publish the change staged at `staging_key` (None: a delete) if it is still pending;
        unless `synced`, its staged file is synced first (the commit may have kept a copy of
        the bytes instead, which this publish removes).

        Returns True if this call (or an earlier one) completed it, False if a newer change
        superseded it. Storage or database errors propagate; the row then stays pending.
        """
        final_key = storage_key(key.book_id, key.path, key.user_id)
        if staging_key is not None and not synced:
            # Missing: moved by an earlier publish, or superseded and removed; the claim tells.
            with contextlib.suppress(BlobNotFound):
                await self._store.sync(staging_key)
        async with self._db.driver_write() as tx:
            # The flag is cleared first and the bytes moved before COMMIT: a failed move rolls
            # the flag back; a move whose COMMIT is lost leaves the bytes in place, which the
            # next publish accepts (`_move`) and readers find at the final key.
            claim = await publish_sql.finish_publish(tx.conn, key, staging_key)
            if claim is not None:
                if staging_key is None:
                    await self._store.delete(final_key)
                else:
                    await self._move(staging_key, final_key, claim.sha256)
        if claim is not None or staging_key is None:
            return True
        # A newer write replaced ours before we published (or an earlier publish of ours
        # finished): whatever is left at the staging key is garbage.
        await self._store.delete(staging_key)
        return False

    async def publish_or_defer(self, key: FileKey, staging_key: str | None, synced: bool = False) -> None:
        """`publish`, leaving the change pending for recovery if storage or the database fails."""
        try:
            await self.publish(key, staging_key, synced)
        except (StorageError, *DB_ERRORS):
            logger.warning("publish deferred to recovery", exc_info=True)

    async def _restore_torn(self, staging_key: str | None, sha256: str | None) -> None:
        """Write a pending change's staged file (and version object) again from the copy its
        commit kept, if a system crash lost or tore it before the publish synced it."""
        if staging_key is None or sha256 is None or self._store.local is None:
            return  # only a local folder's writes keep copies
        async with self._db.read() as conn:
            copy = await publish_sql.staged_copy_of(conn, staging_key)
        if copy is None:
            return
        try:
            intact = sha256_hex(await self._store.read(staging_key)) == sha256
        except BlobNotFound:
            intact = False
        if not intact and sha256_hex(copy) == sha256:
            logger.warning("restoring a staged file from its copy", extra={"key": staging_key})
            await self._store.write_all([(staging_key, copy), (version_key(sha256), copy)])

    async def _drop_orphan_copies(self, older_than: datetime) -> int:
        """Remove staged copies no journal row points at any more (their change was replaced
        before its publish), each once its bytes are on disk as their version's object; return
        how many went."""
        async with self._db.read() as conn:
            orphans = await publish_sql.orphan_copies(conn, older_than)
        for staging_key, data in orphans:
            # The change's version keeps these bytes: make sure they are on disk before the copy
            # goes (the staged file itself is an orphan, removed with the others).
            await self._store.write(version_key(sha256_hex(data)), data)
            async with self._db.write() as tx:
                await publish_sql.drop_copy(tx.conn, staging_key)
        return len(orphans)

    async def _move(self, staging_key: str, final_key: str, sha256: str | None) -> None:
        try:
            await self._store.publish(staging_key, final_key)
        except BlobNotFound:
            # An earlier attempt moved the bytes, then failed to record it: accept the final
            # object if it is exactly the committed content, otherwise the bytes are lost.
            data = await self._store.read(final_key)
            if sha256_hex(data) != sha256:
                raise
            logger.warning("publish found its bytes already in place", extra={"key": final_key})

    async def recover(self, orphan_grace: timedelta, now: datetime | None = None) -> RecoveryReport:
        """Finish abandoned publishes, remove staged objects no journal row references and
        upload-URL objects never completed.

        A pending publish is taken over once it is older than `orphan_grace` or
        `PUBLISH_RETRY_AFTER`, whichever is smaller, so `grace` 0 (every server stopped) finishes
        all of them. Staged objects younger than `orphan_grace` are kept: their writer may still
        be about to commit them. An upload object is kept until `orphan_grace` after its URL expired:
        a completion that verified the URL just before expiry may still be reading it.
        """
        now = now or datetime.now(UTC)
        async with self._db.read() as conn:
            leftovers = await publish_sql.pending(conn, now - min(orphan_grace, PUBLISH_RETRY_AFTER))
        published = failed = 0
        for row in leftovers:
            try:
                await self._restore_torn(row.staging_key, row.sha256)
                if await self.publish(row.key, row.staging_key):
                    published += 1
                    self._metrics.recovery_total.labels("published").inc()
            except Exception:
                failed += 1
                logger.exception("recovery could not publish a pending change")
        copies = await self._drop_orphan_copies(now - orphan_grace)
        orphans = 0
        staged = await self._store.list(STAGING_PREFIX)
        async with self._db.read() as conn:
            referenced = await publish_sql.staging_keys_in_use(conn)
        for blob in staged:
            young = blob.last_modified is not None and now - blob.last_modified < orphan_grace
            if blob.key in referenced or young:
                continue
            await self._store.delete(blob.key)
            orphans += 1
            self._metrics.recovery_total.labels("orphan_removed").inc()
        uploads = 0
        for blob in await self._store.list(UPLOAD_PREFIX):
            if now < _upload_deadline(blob) + orphan_grace:
                continue
            await self._store.delete(blob.key)
            uploads += 1
            self._metrics.recovery_total.labels("upload_expired").inc()
        return RecoveryReport(published, failed, orphans, uploads, copies)


def _upload_deadline(blob: BlobInfo) -> datetime:
    expires = upload_expiry(blob.key)
    if expires is not None:
        return datetime.fromtimestamp(expires, UTC)
    # Not a name we give out: treat it like an orphan of unknown age.
    return blob.last_modified or datetime.min.replace(tzinfo=UTC)
