"""`FileEngine`: writes and deletes of journaled files, the protocol every service shares.

Write protocol (every failure point has a defined outcome):

1. The caller validates everything; a refusal is audited and nothing else happens.
2. `stage`: upload the bytes to a fresh staging key. Failure: nothing committed; the orphan is
   removed by recovery after a grace period.
3. `commit`, one database transaction: compare-and-swap the journal row (`UPDATE ... WHERE
   sha256 = :expected`, or an insert for a create), record the staging key as pending, append
   the audit entry. The commit is the single point where the write happens. A refusal found
   here (lost race) is audited in the same transaction with the row locked. On PostgreSQL an
   update without an idempotency key is committed by one statement that is its own
   transaction (`db.commit_sql`); a swap it refuses changes nothing and goes this way.
4. Publish: move the staged bytes to the path-addressed key under the row lock. Failure here
   does not undo the write: readers follow the pending staging key, and recovery publishes it.
   So it is left until the answer has been sent (`after_response`).

A commit whose outcome is unknown (connection lost during COMMIT) is settled by asking the
database about the transaction, or (once the statement surely ended) by looking for the unique
staging key in the journal; it is never blindly replayed. A delete is the same with a tombstone
and no bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

from panaversity_fs.after_response import after_response
from panaversity_fs.audit.trail import AuditTrail, Subject
from panaversity_fs.config import Settings
from panaversity_fs.db import commit_sql
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import (
    COMMAND_TIMEOUT_MARGIN,
    DB_ERRORS,
    Database,
    WriteTransaction,
    database_failure,
)
from panaversity_fs.deadlines import deadline_passed
from panaversity_fs.errors import Conflict, PanaversityFSError, Unavailable
from panaversity_fs.files.cas import (
    apply_write,
    foreseen_refusal,
    own_hash,
    resolve_unknown_commit,
    settle_alone,
    write_outcome,
)
from panaversity_fs.files.idempotency import Idempotency, Replay, claim, replayed, settle
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.recent import RecentHashes
from panaversity_fs.files.results import DeleteOutcome, WriteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.files.versions import VersionStore
from panaversity_fs.metrics import Metrics
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER
from panaversity_fs.storage.blobs import BlobStore, StorageError, new_staging_key, storage_failure

logger = logging.getLogger(__name__)

COPY_LIMIT = 256 * 1024
"""The largest update whose staged bytes the commit keeps a copy of instead of waiting for the
disk (PostgreSQL, fs store: a sync there is a wait and two thread hand-offs); a larger one's WAL
would cost more than the flush it saves."""


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """Bytes waiting at `staging_key` (their sha256 already checked) to become `target`'s
    content, under the `expected_hash` contract with `expected`."""

    target: Target
    staging_key: str
    sha256: str
    size: int
    expected: str | None
    content_type: str | None
    staged_at: datetime
    kept: bool = False
    """Whether the bytes are in the version store already (else the commit copies them there)."""
    copy: bytes | None = None
    """The bytes, when their file is not yet synced: the commit keeps a copy of them."""


VERSION_OPERATIONS = {
    "restore_version": "restore",
    "revert_changes": "revert",
    "revert": "revert",
    "import": "import",
}
"""The history's name for changes made by these calls (others are create, update or delete)."""


def author_of(op: Operation) -> journal.Author:
    """Who `op`'s changes are by, and what file history calls them."""
    return journal.Author(op.agent_id, VERSION_OPERATIONS.get(op.name))


class _StagedTooLong(Exception):
    """Raised inside a write transaction to roll it back: its staged bytes are too old to use."""


class FileEngine:
    """Stages, commits and deletes journaled files (content and assets alike)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        publisher: Publisher,
        trail: AuditTrail,
        metrics: Metrics,
        versions: VersionStore,
    ) -> None:
        self._db = db
        self._store = store
        self._versions = versions
        self._publisher = publisher
        self._trail = trail
        self._metrics = metrics
        self._stage_deadline = timedelta(seconds=settings.recovery_grace / 2)
        self._statement_limit = settings.database_statement_timeout + COMMAND_TIMEOUT_MARGIN
        self._recent = RecentHashes()
        self._copy_limit = 0 if store.local is None else COPY_LIMIT

    async def replayed(self, idem: Idempotency | None) -> Replay | None:
        """The outcome an earlier call committed under `idem`'s key, if any (a cheap early look).

        Raises:
            InvalidArgument: the key was used for another request.
            Unavailable: the database failed.
        """
        return await replayed(self._db, idem)

    # -- writes --------------------------------------------------------------------------

    async def write(
        self,
        op: Operation,
        target: Target,
        data: bytes,
        sha256: str,
        expected: str | None,
        content_type: str | None = None,
        idem: Idempotency | None = None,
    ) -> WriteOutcome:
        """Stage validated bytes whose sha256 is `sha256`, then commit and publish them.

        A write the file's current row already refuses is refused before any byte is staged: a
        lost race costs one read and its audit entry, no storage. A call with an idempotency
        key skips that look (only its transaction can tell a repeat from a loser), and so does a
        write whose `expected` is the hash this process last committed for the file
        (`RecentHashes`).

        Raises:
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; nothing was written.
        """
        if idem is None:
            await self._refuse_early(op, target, expected)
        copied = expected is not None and self._alone(idem) and len(data) <= self._copy_limit
        staged = await self.stage(op, target, data, sha256, expected, content_type, durable=not copied)
        return await self.commit(op, staged, idem)

    async def _refuse_early(self, op: Operation, target: Target, expected: str | None) -> None:
        if expected is not None and self._recent.holds(target.key, expected):
            return
        users = [target.key.user_id, BASE_USER] if target.user_id is not None else [BASE_USER]
        try:
            rows = await journal.look_up(self._db, target.book_id, target.path, users)
        except DB_ERRORS:
            return  # the commit decides (and reports the failure) as it would have
        refusal = foreseen_refusal(target, expected, rows)
        if refusal is None:
            return
        self._metrics.count_write(target.book_id, refusal.code)
        await self._trail.refused(op, _subject(target), refusal, own_hash(refusal))
        raise refusal

    async def stage(
        self,
        op: Operation,
        target: Target,
        data: bytes,
        sha256: str,
        expected: str | None,
        content_type: str | None = None,
        durable: bool = True,
    ) -> StagedWrite:
        """Upload `data` to a fresh staging key and to the version store (step 2 of the protocol);
        not `durable`: without waiting for the disk (the commit then keeps a copy of `data`).

        Raises:
            Unavailable: storage failed (audited); nothing was written.
        """
        key = new_staging_key()
        staged_at = datetime.now(UTC)
        try:
            await self._versions.capture_before_change(target.key)
            await self._versions.stage(key, sha256, data, durable)
        except StorageError as exc:
            failure = storage_failure(exc)
            self._metrics.count_write(target.book_id, failure.code)
            await self._trail.refused(op, _subject(target), failure)
            raise failure from None
        self._metrics.write_duration.labels("storage").observe(time.perf_counter() - op.started)
        copy = None if durable else data
        return StagedWrite(target, key, sha256, len(data), expected, content_type, staged_at, True, copy)

    async def commit(
        self, op: Operation, staged: StagedWrite, idem: Idempotency | None = None
    ) -> WriteOutcome:
        """Commit bytes already staged (steps 3-4), then publish them.

        The staged object is removed if the commit refuses or fails, or if `idem`'s key turns
        out to be held by a call that committed first (its outcome is returned).

        Raises:
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database failed; nothing was written.
        """
        if not staged.kept:
            staged = await self._keep(op, staged)
        commit_started = time.perf_counter()
        outcome = await self._commit(op, staged, idem)
        self._metrics.write_duration.labels("journal").observe(time.perf_counter() - commit_started)
        target = staged.target
        if not isinstance(outcome, WriteOutcome):
            self._recent.forget(target.key)
        if isinstance(outcome, Replay):
            await self._discard(staged.staging_key)
            self._metrics.replays.labels(op.name).inc()
            return outcome.written()[0]
        if isinstance(outcome, PanaversityFSError):
            if not outcome.details.get("outcome_unknown"):
                # A commit that may have happened may point at these bytes: recovery removes
                # them later only if no journal row does.
                await self._discard(staged.staging_key)
            self._metrics.count_write(target.book_id, outcome.code)
            raise outcome
        self._recent.remember(target.key, staged.sha256)
        publish = self._publisher.publish_or_defer
        await after_response(partial(publish, target.key, staged.staging_key, synced=staged.copy is None))
        if target.user_id is None:
            self._metrics.know_books((target.book_id,))
        self._metrics.count_write(
            target.book_id, "success", "create" if outcome.mode == "created" else "update"
        )
        self._metrics.write_duration.labels("total").observe(time.perf_counter() - op.started)
        return outcome

    async def _keep(self, op: Operation, staged: StagedWrite) -> StagedWrite:
        """Copy bytes staged elsewhere (an upload) into the version store before their commit.

        Raises:
            Unavailable: storage failed (audited); the staged object is removed.
        """
        try:
            await self._versions.capture_before_change(staged.target.key)
            await self._versions.keep_object(staged.sha256, staged.staging_key)
        except StorageError as exc:
            failure = storage_failure(exc)
            await self._discard(staged.staging_key)
            self._metrics.count_write(staged.target.book_id, failure.code)
            await self._trail.refused(op, _subject(staged.target), failure)
            raise failure from None
        return replace(staged, kept=True)

    async def _commit(
        self, op: Operation, staged: StagedWrite, idem: Idempotency | None
    ) -> WriteOutcome | Replay | PanaversityFSError:
        late = self._too_late(staged.staged_at)
        if late is not None:
            await self._trail.refused(op, _subject(staged.target), late)
            return late
        if staged.expected is not None and self._alone(idem):
            alone = await self._commit_alone(op, staged, staged.expected)
            if alone is not None:
                return alone
        if staged.copy is not None:  # a write transaction keeps no copy: the file must be on disk
            try:
                await self._store.sync(staged.staging_key)
            except StorageError as exc:
                failure = storage_failure(exc)
                await self._trail.refused(op, _subject(staged.target), failure)
                return failure
        decided: WriteOutcome | Replay | PanaversityFSError | None = None
        transaction: tuple[int, int] | None = None
        try:
            async with self._db.write() as tx:
                decided = await self._decide_write(tx, op, staged, idem)
                transaction = tx.transaction_id
                if isinstance(decided, WriteOutcome) and self._past_deadline(staged.staged_at):
                    # Lock waits made the commit late: recovery may already treat the staged
                    # bytes as abandoned, so this transaction must not point at them.
                    raise _StagedTooLong
        except _StagedTooLong:
            return await self._waited_too_long(op, staged)
        except DB_ERRORS as exc:
            if decided is None:  # failed before COMMIT: nothing happened
                return database_failure(exc)
            return await resolve_unknown_commit(
                self._db, staged.target, staged.staging_key, decided, exc, transaction
            )
        return decided

    def _alone(self, idem: Idempotency | None) -> bool:
        """Whether an update tries the one-statement commit (PostgreSQL, no idempotency key)."""
        return idem is None and not self._db.is_sqlite

    async def _commit_alone(
        self, op: Operation, staged: StagedWrite, expected: str
    ) -> WriteOutcome | PanaversityFSError | None:
        """An update committed by one statement, a transaction of its own (PostgreSQL,
        `db.commit_sql`: a round trip where a write transaction makes five); None if the swap was
        refused or the entry cannot be cut for it: nothing changed, and the write transaction
        decides (and audits a refusal) as for any other write."""
        target = staged.target
        prepared = self._trail.entry_alone(op, _subject(target), expected, staged.sha256)
        if prepared is None:
            return None
        entry, template = prepared
        swap = journal.cas_parameters(
            target.key,
            expected,
            staged.sha256,
            staged.size,
            staged.staging_key,
            datetime.now(UTC),
            author_of(op),
            staged.content_type,
        )
        # Past the staging deadline recovery may treat the staged bytes as abandoned; a write
        # transaction checks it before COMMIT, this statement is cancelled when it comes (or when
        # the driver would give up on any statement, whichever is first).
        left = self._stage_deadline - (datetime.now(UTC) - staged.staged_at)
        cancel_after = min(left.total_seconds(), self._statement_limit)
        try:
            swapped = await commit_sql.swap_alone(
                self._db, target.key, swap, entry, template, cancel_after, staged.copy
            )
        except PanaversityFSError as unknown:
            return unknown
        except DB_ERRORS as exc:
            settled = await settle_alone(
                self._db, target, staged.staging_key, expected, staged.sha256, staged.size, exc
            )
            if isinstance(settled, PanaversityFSError) and self._past_deadline(staged.staged_at):
                return await self._waited_too_long(op, staged)  # cancelled at the deadline
            return settled
        if swapped is None:
            return None
        self._trail.appended_alone(entry["status"])
        return write_outcome(target, ("updated", expected, swapped.version), staged.sha256, staged.size)

    async def _waited_too_long(self, op: Operation, staged: StagedWrite) -> Unavailable:
        late = Unavailable("the write waited too long for its commit; nothing was written, retry")
        await self._trail.refused(op, _subject(staged.target), late)
        return late

    def _past_deadline(self, staged_at: datetime) -> bool:
        return datetime.now(UTC) - staged_at > self._stage_deadline

    def _too_late(self, staged_at: datetime) -> Unavailable | None:
        if self._past_deadline(staged_at):
            return Unavailable("the upload took too long to commit; retry")
        if deadline_passed():
            return Unavailable("the call ran out of time before its commit; nothing was written, retry")
        return None

    async def _decide_write(
        self, tx: WriteTransaction, op: Operation, staged: StagedWrite, idem: Idempotency | None
    ) -> WriteOutcome | Replay | PanaversityFSError:
        """The write's statements in one transaction: claim the key, compare-and-swap, audit."""
        target = staged.target
        now = datetime.now(UTC)
        decided: WriteOutcome | PanaversityFSError
        try:
            replay = await claim(tx, idem, now) if idem is not None else None
        except PanaversityFSError as reused:
            idem, decided = None, reused  # the key is another request's: neither record nor release it
        else:
            if replay is not None:
                return replay
            applied = await apply_write(
                tx.conn,
                target,
                staged.expected,
                staged.sha256,
                staged.size,
                staged.staging_key,
                now,
                staged.content_type,
                self._store.backend,
                author_of(op),
            )
            decided = (
                applied
                if isinstance(applied, PanaversityFSError)
                else write_outcome(target, applied, staged.sha256, staged.size)
            )
        await settle(tx, idem, decided, staged.content_type)
        if isinstance(decided, PanaversityFSError):
            own = own_hash(decided)
            await self._trail.append(tx, op, _subject(target), own, own, decided)
            return decided
        await self._trail.append(tx, op, _subject(target), decided.previous_hash, staged.sha256)
        return decided

    async def _discard(self, staging_key: str) -> None:
        try:
            await self._store.delete(staging_key)
            self._metrics.storage_rollback_total.inc()
        except StorageError:
            logger.warning("could not remove a discarded staged object; recovery will", exc_info=True)

    # -- deletes -------------------------------------------------------------------------

    async def delete(
        self, op: Operation, target: Target, expected: str | None, idem: Idempotency | None = None
    ) -> DeleteOutcome:
        """Tombstone a validated file and remove its object (a missing file: `existed: false`).

        Raises:
            InvalidArgument: `idem`'s key was used for another request.
            Conflict: `expected` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted (with `outcome_unknown`: a COMMIT
                whose outcome cannot be told).
        """
        decided: DeleteOutcome | Replay | PanaversityFSError | None = None
        transaction: tuple[int, int] | None = None
        try:
            async with self._db.write() as tx:
                decided = await self._decide_delete(tx, op, target, expected, idem)
                transaction = tx.transaction_id
        except DB_ERRORS as exc:
            if decided is None:  # failed before COMMIT: nothing happened
                self._metrics.delete_total.labels("error").inc()
                raise database_failure(exc) from None
            decided = await resolve_unknown_commit(self._db, target, None, decided, exc, transaction)
        self._recent.forget(target.key)
        if isinstance(decided, Replay):
            self._metrics.replays.labels(op.name).inc()
            return decided.deleted()
        if isinstance(decided, PanaversityFSError):
            self._metrics.delete_total.labels(
                "error" if isinstance(decided, Unavailable) else "refused"
            ).inc()
            raise decided
        if decided.existed:
            await after_response(partial(self._publisher.publish_or_defer, target.key, None))
        self._metrics.delete_total.labels("success").inc()
        return decided

    async def _decide_delete(
        self,
        tx: WriteTransaction,
        op: Operation,
        target: Target,
        expected: str | None,
        idem: Idempotency | None,
    ) -> DeleteOutcome | Replay | PanaversityFSError:
        """The delete's statements in one transaction: claim the key, tombstone, audit."""
        try:
            replay = await claim(tx, idem, datetime.now(UTC)) if idem is not None else None
        except PanaversityFSError as reused:  # another request's key: neither record nor release it
            await self._trail.append(tx, op, _subject(target), None, None, reused)
            return reused
        if replay is not None:
            return replay
        row = await journal.lock(tx.conn, target.key)
        previous = row.sha256 if row is not None else None
        if row is not None and row.exists and expected not in (None, row.sha256):
            refused = Conflict(
                "expected_hash is not the file's current hash: read it again before deleting",
                current_hash=row.sha256,
            )
            await settle(tx, idem, refused)
            await self._trail.append(tx, op, _subject(target), previous, previous, refused)
            return refused
        if previous is not None:
            await journal.tombstone(tx.conn, target.key, datetime.now(UTC), author_of(op))
        decided = DeleteOutcome(
            book_id=target.book_id,
            path=target.path,
            existed=previous is not None,
            previous_hash=previous,
            user_id=target.user_id,
            source=target.source,
        )
        await settle(tx, idem, decided)
        await self._trail.append(tx, op, _subject(target), previous, None)
        return decided


def _subject(target: Target) -> Subject:
    return Subject(target.book_id, target.path, target.user_id)
