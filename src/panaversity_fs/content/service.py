"""`ContentService`: read, write and delete lesson files under the journal's write protocol.

Write protocol (every failure point has a defined outcome):

1. Validate everything; a refusal is audited and nothing else happens.
2. Upload the bytes to a fresh staging key. Failure: nothing committed; the orphan is removed
   by recovery after a grace period.
3. One database transaction: compare-and-swap the journal row (`UPDATE ... WHERE sha256 =
   :expected`, or an insert for a create), record the staging key as pending, append the audit
   entry. Commit is the single point where the write happens. A refusal found here (lost race)
   is audited in the same transaction with the row locked.
4. Publish: move the staged bytes to the path-addressed key under the row lock. Failure here
   does not undo the write: readers follow the pending staging key, and recovery publishes it.

A commit whose outcome is unknown (connection lost during COMMIT) is resolved by looking for
the unique staging key in the journal; it is never blindly replayed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.auth.identity import Caller
from panaversity_fs.config import Settings
from panaversity_fs.content.publisher import Publisher
from panaversity_fs.content.results import DeleteOutcome, FileContent, WriteOutcome
from panaversity_fs.errors import (
    Conflict,
    HashRequired,
    Internal,
    InvalidArgument,
    NotFound,
    PanaversityFSError,
    TooLarge,
    Unavailable,
)
from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.audit_repository import NewAuditEntry
from panaversity_fs.journal.engine import Database
from panaversity_fs.journal.repository import FileKey, JournalRow
from panaversity_fs.metrics import Metrics
from panaversity_fs.paths import (
    BASE_USER,
    check_book_id,
    check_hash,
    check_user_id,
    content_path,
    describe_rejected_path,
    storage_key,
)
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 4
"""Journal/storage round trips a read makes before it calls a mismatch real."""

_DB_ERRORS = (SQLAlchemyError, OSError)

WriteDecision = tuple[Literal["created", "updated"], str | None, int]
"""A committed write: mode, previous hash, new version."""


@dataclass(frozen=True, slots=True)
class Target:
    """A validated file address: book, canonical path, optional overlay owner."""

    book_id: str
    path: str
    user_id: str | None

    @property
    def key(self) -> FileKey:
        """The journal key (overlays by user, shared content as `__base__`)."""
        return FileKey(self.book_id, self.path, self.user_id or BASE_USER)

    @property
    def source(self) -> str:
        """`overlay` for a user's file, `base` for shared content."""
        return "overlay" if self.user_id else "base"


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


class ContentService:
    """The content operations, shared by every tool and transport."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        publisher: Publisher,
        audit: AuditRecorder,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._publisher = publisher
        self._audit = audit
        self._metrics = metrics
        self._stage_deadline = timedelta(seconds=settings.recovery_grace / 2)

    # -- reads ---------------------------------------------------------------------------

    async def read(self, caller: Caller, book_id: str, path: str, user_id: str | None = None) -> FileContent:
        """Return a file's content and hash; with `user_id`, the overlay if there is one.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            NotFound: neither the overlay nor the base file exists.
            Unavailable: the database or storage failed; retry.
            Internal: the stored bytes do not match the journal (run fsck).
        """
        started = time.perf_counter()
        try:
            target = self._target(book_id, path, user_id)
            result = await self._read_resolved(target)
        except PanaversityFSError as error:
            self._metrics.read_total.labels(_status(error), "none").inc()
            self._audit.enqueue(
                self._entry(caller, "read_content", book_id, path, user_id, None, None, started, error)
            )
            raise
        self._metrics.read_total.labels("success", result.source).inc()
        if target.user_id:
            self._metrics.overlay_latency.observe(time.perf_counter() - started)
        self._audit.enqueue(
            self._file_entry(caller, "read_content", target, result.file_hash, result.file_hash, started)
        )
        return result

    async def _read_resolved(self, target: Target) -> FileContent:
        users = [target.user_id, BASE_USER] if target.user_id else [BASE_USER]
        versions_seen: set[tuple[str, int]] = set()
        for _ in range(READ_ATTEMPTS):
            try:
                async with self._db.read() as conn:
                    rows = await journal.fetch(conn, target.book_id, target.path, users)
            except _DB_ERRORS as exc:
                raise _unavailable("database", exc) from None
            row = _resolve(rows, target.user_id)
            if row is None:
                raise NotFound(f"{target.path} does not exist", path=target.path)
            data = await self._read_row_bytes(row)
            if data is not None and sha256_hex(data) == row.sha256:
                return self._file_content(target, row, data)
            versions_seen.add((row.user_id, row.version))
        if len(versions_seen) == 1:
            self._metrics.journal_storage_mismatch_total.inc()
            logger.error(
                "stored bytes do not match the journal",
                extra={"book_id": target.book_id, "path": target.path},
            )
            raise Internal("stored bytes do not match the journal; an operator should run fsck")
        raise Unavailable("the file changed during the read; retry", path=target.path)

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
                raise _unavailable("storage", exc) from None
        return None

    def _file_content(self, target: Target, row: JournalRow, data: bytes) -> FileContent:
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

    # -- writes --------------------------------------------------------------------------

    async def write(
        self,
        caller: Caller,
        book_id: str,
        path: str,
        content: str,
        expected_hash: str | None = None,
        user_id: str | None = None,
    ) -> WriteOutcome:
        """Create a file (no `expected_hash`) or replace it (its current hash).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument, TooLarge: bad arguments.
            HashRequired: the file exists and no `expected_hash` was given.
            Conflict: `expected_hash` is not the current hash.
            NotFound: `expected_hash` was given for a file that does not exist.
            Unavailable: the database or storage failed; nothing was written.
        """
        started = time.perf_counter()
        try:
            target = self._target(book_id, path, user_id)
            expected = check_hash(expected_hash)
            data = self._encode(content)
        except PanaversityFSError as error:
            await self._audit_refusal(caller, "write_content", book_id, path, user_id, started, error)
            raise
        new_hash = sha256_hex(data)
        try:
            staging_key = await self._store.stage(data)
        except StorageError as exc:
            self._metrics.write_total.labels("error", "unknown").inc()
            failure = _unavailable("storage", exc)
            await self._audit_refusal(caller, "write_content", book_id, path, user_id, started, failure)
            raise failure from None
        staged_at = datetime.now(UTC)
        self._metrics.write_duration.labels("storage").observe(time.perf_counter() - started)
        commit_started = time.perf_counter()
        outcome = await self._commit(
            caller, target, expected, new_hash, len(data), staging_key, staged_at, started
        )
        self._metrics.write_duration.labels("journal").observe(time.perf_counter() - commit_started)
        if isinstance(outcome, PanaversityFSError):
            await self._discard(staging_key)
            self._metrics.write_total.labels(_status(outcome), "unknown").inc()
            raise outcome
        mode, previous, version = outcome
        await self._publish_now(target.key, staging_key)
        self._metrics.write_total.labels("success", "create" if mode == "created" else "update").inc()
        self._metrics.write_duration.labels("total").observe(time.perf_counter() - started)
        return WriteOutcome(
            book_id=target.book_id,
            path=target.path,
            mode=mode,
            file_hash=new_hash,
            size=len(data),
            version=version,
            previous_hash=previous,
            user_id=target.user_id,
            source=target.source,  # type: ignore[arg-type]
            namespace=target.source,  # type: ignore[arg-type]
        )

    async def _commit(
        self,
        caller: Caller,
        target: Target,
        expected: str | None,
        new_hash: str,
        size: int,
        staging_key: str,
        staged_at: datetime,
        started: float,
    ) -> WriteDecision | PanaversityFSError:
        if datetime.now(UTC) - staged_at > self._stage_deadline:
            return Unavailable("the upload took too long to commit; retry")
        statements_done = False
        decided: WriteDecision | PanaversityFSError | None = None
        try:
            async with self._db.write() as conn:
                now = datetime.now(UTC)
                decided = await self._apply_write(conn, target, expected, new_hash, size, staging_key, now)
                if isinstance(decided, PanaversityFSError):
                    current = (
                        decided.details.get("current_hash")
                        if isinstance(decided, Conflict | HashRequired)
                        else None
                    )
                    own = current if decided.details.get("current_source") != "base" else None
                    await self._audit.append(
                        conn,
                        self._file_entry(caller, "write_content", target, own, own, started, decided),
                    )
                    decided.details.pop("current_source", None)
                else:
                    _mode, previous, _ = decided
                    await self._audit.append(
                        conn,
                        self._file_entry(caller, "write_content", target, previous, new_hash, started),
                    )
                statements_done = True
        except _DB_ERRORS as exc:
            if not statements_done:
                return _unavailable("database", exc)
            assert decided is not None
            return await self._resolve_unknown_commit(target, staging_key, decided, exc)
        if not isinstance(decided, PanaversityFSError):
            self._metrics.audit_entries_total.labels("success").inc()
        else:
            self._metrics.audit_entries_total.labels(_status(decided)).inc()
        return decided

    async def _apply_write(
        self,
        conn: AsyncConnection,
        target: Target,
        expected: str | None,
        new_hash: str,
        size: int,
        staging_key: str,
        now: datetime,
    ) -> WriteDecision | PanaversityFSError:
        key = target.key
        backend = self._store.backend
        if expected is None:
            version = await journal.create(conn, key, new_hash, size, staging_key, now, backend)
            if version is not None:
                return ("created", None, version)
            row = await journal.lock(conn, key)
            current = row.sha256 if row is not None else None
            return HashRequired(
                "the file exists: pass its current hash as expected_hash to replace it",
                current_hash=current,
            )
        version = await journal.compare_and_swap(conn, key, expected, new_hash, size, staging_key, now)
        if version is not None:
            return ("updated", expected, version)
        row = await journal.lock(conn, key)
        if row is not None and row.exists:
            return Conflict(
                "expected_hash is not the file's current hash: re-read, merge, retry",
                current_hash=row.sha256,
            )
        if target.user_id is not None:
            base = (await journal.fetch(conn, key.book_id, key.path, [BASE_USER])).get(BASE_USER)
            if base is not None and base.exists:
                if base.sha256 == expected:
                    # Forking the overlay from the base version the agent read.
                    version = await journal.create(conn, key, new_hash, size, staging_key, now, backend)
                    if version is not None:
                        return ("created", None, version)
                    row = await journal.lock(conn, key)
                    return Conflict(
                        "the overlay was created concurrently: re-read, merge, retry",
                        current_hash=row.sha256 if row is not None else None,
                    )
                return Conflict(
                    "expected_hash is not the current hash of the file you read",
                    current_hash=base.sha256,
                    current_source="base",
                )
        return NotFound("the file does not exist: create it without expected_hash", path=target.path)

    async def _resolve_unknown_commit(
        self,
        target: Target,
        staging_key: str,
        decided: WriteDecision | PanaversityFSError,
        exc: BaseException,
    ) -> WriteDecision | PanaversityFSError:
        """Decide whether a transaction whose COMMIT failed took effect, without replaying it.

        The staging key is unique to this attempt: if the journal row points at it, the commit
        happened and `decided` is what it did.
        """
        logger.warning("commit outcome unknown; checking the journal", exc_info=exc)
        try:
            async with self._db.read() as conn:
                rows = await journal.fetch(conn, target.book_id, target.path, [target.key.user_id])
        except _DB_ERRORS:
            return Unavailable(
                "the database failed while committing and the outcome is unknown; re-read the "
                "file before retrying",
                outcome_unknown=True,
            )
        row = rows.get(target.key.user_id)
        if row is not None and row.staging_key == staging_key and not isinstance(decided, PanaversityFSError):
            return decided
        return _unavailable("database", exc)

    async def _publish_now(self, key: FileKey, staging_key: str | None) -> None:
        try:
            await self._publisher.publish(key, staging_key)
        except (StorageError, *_DB_ERRORS):
            logger.warning("publish deferred to recovery", exc_info=True)

    async def _discard(self, staging_key: str) -> None:
        try:
            await self._store.delete(staging_key)
            self._metrics.storage_rollback_total.inc()
        except StorageError:
            logger.warning("could not remove a discarded staged object; recovery will", exc_info=True)

    # -- deletes -------------------------------------------------------------------------

    async def delete(
        self,
        caller: Caller,
        book_id: str,
        path: str,
        user_id: str | None = None,
        expected_hash: str | None = None,
    ) -> DeleteOutcome:
        """Delete a file (an overlay when `user_id` is given; base is never touched then).

        Deleting a missing file succeeds with `existed: false`.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            Conflict: `expected_hash` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        started = time.perf_counter()
        try:
            target = self._target(book_id, path, user_id)
            expected = check_hash(expected_hash)
        except PanaversityFSError as error:
            await self._audit_refusal(caller, "delete_content", book_id, path, user_id, started, error)
            raise
        refusal: PanaversityFSError | None = None
        previous: str | None = None
        try:
            async with self._db.write() as conn:
                row = await journal.lock(conn, target.key)
                previous = row.sha256 if row is not None else None
                if row is not None and row.exists and expected is not None and expected != row.sha256:
                    refusal = Conflict(
                        "expected_hash is not the file's current hash", current_hash=row.sha256
                    )
                    entry = self._file_entry(
                        caller, "delete_content", target, previous, previous, started, refusal
                    )
                else:
                    if previous is not None:
                        await journal.tombstone(conn, target.key, datetime.now(UTC))
                    entry = self._file_entry(caller, "delete_content", target, previous, None, started)
                await self._audit.append(conn, entry)
        except _DB_ERRORS as exc:
            self._metrics.delete_total.labels("error").inc()
            raise _unavailable("database", exc) from None
        if refusal is not None:
            self._metrics.delete_total.labels("refused").inc()
            raise refusal
        if previous is not None:
            await self._publish_now(target.key, None)
        self._metrics.delete_total.labels("success").inc()
        return DeleteOutcome(
            book_id=target.book_id,
            path=target.path,
            existed=previous is not None,
            previous_hash=previous,
            user_id=target.user_id,
            source=target.source,  # type: ignore[arg-type]
            namespace=target.source,  # type: ignore[arg-type]
        )

    # -- shared helpers ------------------------------------------------------------------

    def _target(self, book_id: object, path: object, user_id: object) -> Target:
        return Target(check_book_id(book_id), content_path(path).path, check_user_id(user_id))

    def _encode(self, content: object) -> bytes:
        if not isinstance(content, str):
            raise InvalidArgument("content must be a string", field="content")
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("content is not valid UTF-8 (lone surrogate)", field="content") from None
        if len(data) > self._settings.max_content_bytes:
            raise TooLarge(
                f"content is {len(data)} bytes; the limit is {self._settings.max_content_bytes}",
                limit=self._settings.max_content_bytes,
            )
        return data

    async def _audit_refusal(
        self,
        caller: Caller,
        operation: str,
        book_id: object,
        path: object,
        user_id: object,
        started: float,
        error: PanaversityFSError,
    ) -> None:
        entry = self._entry(caller, operation, book_id, path, user_id, None, None, started, error)
        try:
            async with self._db.write() as conn:
                await self._audit.append(conn, entry)
            self._metrics.audit_entries_total.labels(_status(error)).inc()
        except _DB_ERRORS:
            logger.exception("could not audit a refused %s", operation)

    def _file_entry(
        self,
        caller: Caller,
        operation: str,
        target: Target,
        prev_hash: str | None,
        new_hash: str | None,
        started: float,
        error: PanaversityFSError | None = None,
    ) -> NewAuditEntry:
        return self._entry(
            caller,
            operation,
            target.book_id,
            target.path,
            target.user_id,
            prev_hash,
            new_hash,
            started,
            error,
        )

    def _entry(
        self,
        caller: Caller,
        operation: str,
        book_id: object,
        path: object,
        user_id: object,
        prev_hash: str | None,
        new_hash: str | None,
        started: float,
        error: PanaversityFSError | None = None,
    ) -> NewAuditEntry:
        return NewAuditEntry(
            created_at=datetime.now(UTC),
            agent_id=caller.agent_id,
            operation=operation,
            book_id=describe_rejected_path(book_id, 64),
            path=describe_rejected_path(path, 600),
            user_id=describe_rejected_path(user_id, 100) if user_id is not None else BASE_USER,
            prev_hash=prev_hash,
            new_hash=new_hash,
            status="success" if error is None else _status(error),
            error_code=error.code if error is not None else None,
            error_message=error.message[:500] if error is not None else None,
            execution_time_ms=int((time.perf_counter() - started) * 1000),
            request_id=caller.request_id[:64] if caller.request_id else None,
        )


def _resolve(rows: dict[str, JournalRow], user_id: str | None) -> JournalRow | None:
    if user_id is not None:
        overlay = rows.get(user_id)
        if overlay is not None and overlay.exists:
            return overlay
    base = rows.get(BASE_USER)
    return base if base is not None and base.exists else None


def _status(error: PanaversityFSError) -> str:
    return "error" if error.code in ("UNAVAILABLE", "INTERNAL") else "refused"


def _unavailable(component: str, exc: BaseException) -> Unavailable:
    logger.warning("%s failure", component, exc_info=exc)
    return Unavailable(f"the {component} is unavailable; nothing was changed, retry later")
