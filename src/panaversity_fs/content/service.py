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

import logging
import time
from collections.abc import Generator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.app.limits import deadline_passed
from panaversity_fs.audit.entries import (
    DB_ERRORS,
    ReadNote,
    append_refusal,
    audit_entry,
    file_entry,
    outcome_status,
    storage_unavailable,
)
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.auth.identity import Caller
from panaversity_fs.config import Settings
from panaversity_fs.db import transactions
from panaversity_fs.db.engine import Database, database_unavailable
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import (
    Conflict,
    HashRequired,
    InvalidArgument,
    PanaversityFSError,
    TooLarge,
    Unavailable,
)
from panaversity_fs.files.cas import apply_write, resolve_unknown_commit, write_outcome
from panaversity_fs.files.deletes import Deleter
from panaversity_fs.files.idempotency import Idempotency, Replay, claim, replayed, settle
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.results import DeleteOutcome, FileContent, WriteOutcome
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.metrics import Metrics
from panaversity_fs.paths import check_hash
from panaversity_fs.storage.blobs import BlobStore, StorageError

__all__ = ["ContentService", "Target", "sha256_hex"]

logger = logging.getLogger(__name__)


class _StagedTooLong(Exception):
    """Raised inside a write transaction to roll it back: its staged bytes are too old to use."""


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
        self._reader = FileReader(db, store, metrics)
        self.deleter = Deleter(db, publisher, audit, metrics)
        """Deletes of validated files (content and assets alike)."""

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
            result = await self._reader.resolved(target)
        except PanaversityFSError as error:
            self._metrics.read_total.labels(outcome_status(error), "none").inc()
            self.note_read(caller, "read_content", book_id, path, user_id, started, error)
            raise
        self._metrics.read_total.labels("success", result.source).inc()
        if target.user_id:
            self._metrics.overlay_latency.observe(time.perf_counter() - started)
        self._audit.enqueue(
            file_entry(caller, "read_content", target, result.file_hash, result.file_hash, started)
        )
        return result

    async def fetch_bytes(self, row: JournalRow) -> bytes | None:
        """Return the bytes of a journal row if they match its hash, else None (changed or lost).

        The pending staging key is tried first, so a committed but unpublished write is served.

        Raises:
            Unavailable: storage failed.
        """
        return await self._reader.fetch_bytes(row)

    async def follow(
        self, book_id: str, path: str, user_id: str | None, row: JournalRow | None = None
    ) -> tuple[JournalRow, bytes] | None:
        """The visible row of a file and its verified bytes, re-read while it changes (see
        `FileReader.follow`); None if no live row is visible.

        Raises:
            Unavailable: the database or storage failed, or the file kept changing; retry.
            Internal: the stored bytes do not match an unchanging journal row (run fsck).
        """
        return await self._reader.follow(book_id, path, user_id, row)

    def note_read(
        self,
        caller: Caller,
        operation: str,
        book_id: object,
        what: object,
        user_id: object,
        started: float,
        error: PanaversityFSError | None = None,
    ) -> None:
        """Audit a read-only operation (batched, like single-file reads); `what` names its scope."""
        self._audit.enqueue(
            audit_entry(caller, operation, book_id, what, user_id, None, None, started, error)
        )

    @contextmanager
    def audited_read(
        self, caller: Caller, operation: str, book_id: object, what: object, user_id: object = None
    ) -> Generator[ReadNote]:
        """Audit the read-only operation run inside, refused (a `PanaversityFSError`, re-raised)
        or answered, as `note_read` does, naming what the yielded note names at the end."""
        started = time.perf_counter()
        note = ReadNote(book_id, what, user_id)
        try:
            yield note
        except PanaversityFSError as error:
            self.note_read(caller, operation, note.book_id, note.what, note.user_id, started, error)
            raise
        self.note_read(caller, operation, note.book_id, note.what, note.user_id, started)

    # -- writes --------------------------------------------------------------------------

    async def write(
        self,
        caller: Caller,
        book_id: str,
        path: str,
        content: str,
        expected_hash: str | None = None,
        user_id: str | None = None,
        idempotency_key: object = None,
    ) -> WriteOutcome:
        """Create a file (no `expected_hash`) or replace it (its current hash).

        With `idempotency_key`, a call repeating one that committed returns its outcome.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument, TooLarge: bad arguments (a reused key).
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
            new_hash = sha256_hex(data)
            idem = Idempotency.for_call(
                caller, "write_content", idempotency_key, target.arguments(expected, new_hash)
            )
            replay = await replayed(self._db, idem)
        except PanaversityFSError as error:
            self._metrics.count_write(book_id, error.code)
            await self.audit_refusal(caller, "write_content", book_id, path, user_id, started, error)
            raise
        if replay is not None:
            self._metrics.replays.labels("write_content").inc()
            return replay.write()[0]
        return await self.write_bytes(
            caller, "write_content", target, data, new_hash, expected, None, started, idem
        )

    async def write_bytes(
        self,
        caller: Caller,
        operation: str,
        target: Target,
        data: bytes,
        new_hash: str,
        expected: str | None,
        content_type: str | None,
        started: float,
        idem: Idempotency | None = None,
    ) -> WriteOutcome:
        """Stage validated bytes whose sha256 is `new_hash`, then commit and publish them (steps
        2-4 of the protocol).

        Raises:
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; nothing was written.
        """
        try:
            staging_key = await self._store.stage(data)
        except StorageError as exc:
            failure = storage_unavailable(exc)
            self._metrics.count_write(target.book_id, failure.code)
            await self.audit_refusal(
                caller, operation, target.book_id, target.path, target.user_id, started, failure
            )
            raise failure from None
        self._metrics.write_duration.labels("storage").observe(time.perf_counter() - started)
        return await self.commit_staged(
            caller,
            operation,
            target,
            staging_key,
            new_hash,
            len(data),
            expected,
            content_type,
            started,
            staged_at=datetime.now(UTC),
            idem=idem,
        )

    async def commit_staged(
        self,
        caller: Caller,
        operation: str,
        target: Target,
        staging_key: str,
        new_hash: str,
        size: int,
        expected: str | None,
        content_type: str | None,
        started: float,
        staged_at: datetime,
        idem: Idempotency | None = None,
    ) -> WriteOutcome:
        """Commit bytes already staged at `staging_key` (verified to hash to `new_hash`), then publish.

        The staged object is removed if the commit refuses or fails, or if `idem`'s key turns
        out to be held by a call that committed first (its outcome is returned).

        Raises:
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database failed; nothing was written.
        """
        commit_started = time.perf_counter()
        outcome = await self._commit(
            caller,
            operation,
            target,
            expected,
            new_hash,
            size,
            staging_key,
            staged_at,
            started,
            content_type,
            idem,
        )
        self._metrics.write_duration.labels("journal").observe(time.perf_counter() - commit_started)
        if isinstance(outcome, Replay):
            await self._discard(staging_key)
            self._metrics.replays.labels(operation).inc()
            return outcome.write()[0]
        if isinstance(outcome, PanaversityFSError):
            if not outcome.details.get("outcome_unknown"):
                # A commit that may have happened may point at these bytes: recovery removes
                # them later only if no journal row does.
                await self._discard(staging_key)
            self._metrics.count_write(target.book_id, outcome.code)
            raise outcome
        await self._publisher.publish_or_defer(target.key, staging_key)
        if target.user_id is None:
            self._metrics.know_books((target.book_id,))
        self._metrics.count_write(
            target.book_id, "success", "create" if outcome.mode == "created" else "update"
        )
        self._metrics.write_duration.labels("total").observe(time.perf_counter() - started)
        return outcome

    async def _commit(
        self,
        caller: Caller,
        operation: str,
        target: Target,
        expected: str | None,
        new_hash: str,
        size: int,
        staging_key: str,
        staged_at: datetime,
        started: float,
        content_type: str | None,
        idem: Idempotency | None,
    ) -> WriteOutcome | Replay | PanaversityFSError:
        late = self._too_late(staged_at)
        if late is not None:
            await self.audit_refusal(
                caller, operation, target.book_id, target.path, target.user_id, started, late
            )
            return late
        decided: WriteOutcome | Replay | PanaversityFSError | None = None
        transaction: tuple[int, int] | None = None
        try:
            async with self._db.write() as conn:
                decided = await self._decide(
                    conn,
                    caller,
                    operation,
                    target,
                    expected,
                    new_hash,
                    size,
                    staging_key,
                    started,
                    content_type,
                    idem,
                )
                transaction = transactions.remembered(conn)
                if isinstance(decided, WriteOutcome) and datetime.now(UTC) - staged_at > self._stage_deadline:
                    # Lock waits made the commit late: recovery may already treat the staged
                    # bytes as abandoned, so this transaction must not point at them.
                    raise _StagedTooLong
        except _StagedTooLong:
            late = Unavailable("the write waited too long for its commit; nothing was written, retry")
            await self.audit_refusal(
                caller, operation, target.book_id, target.path, target.user_id, started, late
            )
            return late
        except DB_ERRORS as exc:
            if decided is None:  # failed before COMMIT: nothing happened
                return database_unavailable(exc)
            return await resolve_unknown_commit(self._db, target, staging_key, decided, exc, transaction)
        return decided

    def _too_late(self, staged_at: datetime) -> Unavailable | None:
        if datetime.now(UTC) - staged_at > self._stage_deadline:
            return Unavailable("the upload took too long to commit; retry")
        if deadline_passed():
            return Unavailable("the call ran out of time before its commit; nothing was written, retry")
        return None

    async def _decide(
        self,
        conn: AsyncConnection,
        caller: Caller,
        operation: str,
        target: Target,
        expected: str | None,
        new_hash: str,
        size: int,
        staging_key: str,
        started: float,
        content_type: str | None,
        idem: Idempotency | None,
    ) -> WriteOutcome | Replay | PanaversityFSError:
        """The write's statements in one transaction: claim the key, compare-and-swap, audit."""
        now = datetime.now(UTC)
        decided: WriteOutcome | PanaversityFSError
        try:
            replay = await claim(conn, idem, now) if idem is not None else None
        except PanaversityFSError as reused:
            idem, decided = None, reused  # the key is another request's: neither record nor release it
        else:
            if replay is not None:
                return replay
            applied = await apply_write(
                conn, target, expected, new_hash, size, staging_key, now, content_type, self._store.backend
            )
            decided = (
                applied
                if isinstance(applied, PanaversityFSError)
                else write_outcome(target, applied, new_hash, size)
            )
        await settle(conn, idem, decided, content_type)
        if isinstance(decided, PanaversityFSError):
            current = (
                decided.details.get("current_hash") if isinstance(decided, Conflict | HashRequired) else None
            )
            own = current if decided.details.get("current_source") != "base" else None
            await self._audit.append(conn, file_entry(caller, operation, target, own, own, started, decided))
            decided.details.pop("current_source", None)
            return decided
        await self._audit.append(
            conn, file_entry(caller, operation, target, decided.previous_hash, new_hash, started)
        )
        return decided

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
        idempotency_key: object = None,
    ) -> DeleteOutcome:
        """Delete a file (an overlay when `user_id` is given; base is never touched then).

        Deleting a missing file succeeds with `existed: false`. With `idempotency_key`, a call
        repeating one that committed returns its outcome.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (a reused key).
            Conflict: `expected_hash` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        started = time.perf_counter()
        try:
            target = self._target(book_id, path, user_id)
            expected = check_hash(expected_hash)
            idem = Idempotency.for_call(caller, "delete_content", idempotency_key, target.arguments(expected))
        except PanaversityFSError as error:
            await self.audit_refusal(caller, "delete_content", book_id, path, user_id, started, error)
            raise
        return await self.deleter.delete_file(caller, "delete_content", target, expected, started, idem)

    # -- shared helpers ------------------------------------------------------------------

    def _target(self, book_id: object, path: object, user_id: object) -> Target:
        return Target.content(book_id, path, user_id)

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

    async def audit_refusal(
        self,
        caller: Caller,
        operation: str,
        book_id: object,
        path: object,
        user_id: object,
        started: float,
        error: PanaversityFSError,
    ) -> None:
        """Audit a refused mutation in a transaction of its own."""
        await append_refusal(self._db, self._audit, caller, operation, book_id, path, user_id, started, error)
