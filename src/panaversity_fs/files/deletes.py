"""Deleting files under the write protocol: a tombstone and its audit entry in one transaction,
then the object's removal (the publish of a delete; recovery finishes it if this one fails)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.audit.entries import DB_ERRORS, file_entry
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.auth.identity import Caller
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database, database_unavailable
from panaversity_fs.errors import Conflict, PanaversityFSError
from panaversity_fs.files.idempotency import Idempotency, Replay, claim, settle
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.results import DeleteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.metrics import Metrics


class Deleter:
    """`delete_content` and `delete_asset` after validation."""

    def __init__(self, db: Database, publisher: Publisher, audit: AuditRecorder, metrics: Metrics) -> None:
        self._db = db
        self._publisher = publisher
        self._audit = audit
        self._metrics = metrics

    async def delete_file(
        self,
        caller: Caller,
        operation: str,
        target: Target,
        expected: str | None,
        started: float,
        idem: Idempotency | None = None,
    ) -> DeleteOutcome:
        """Tombstone a validated file and remove its object (a missing file: `existed: false`).

        Raises:
            InvalidArgument: `idem`'s key was used for another request.
            Conflict: `expected` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        try:
            async with self._db.write() as conn:
                decided = await self._decide(conn, caller, operation, target, expected, started, idem)
        except DB_ERRORS as exc:
            self._metrics.delete_total.labels("error").inc()
            raise database_unavailable(exc) from None
        if isinstance(decided, Replay):
            self._metrics.replays.labels(operation).inc()
            return decided.delete()
        if isinstance(decided, PanaversityFSError):
            self._metrics.delete_total.labels("refused").inc()
            raise decided
        if decided.existed:
            await self._publisher.publish_or_defer(target.key, None)
        self._metrics.delete_total.labels("success").inc()
        return decided

    async def _decide(
        self,
        conn: AsyncConnection,
        caller: Caller,
        operation: str,
        target: Target,
        expected: str | None,
        started: float,
        idem: Idempotency | None,
    ) -> DeleteOutcome | Replay | PanaversityFSError:
        """The delete's statements in one transaction: claim the key, tombstone, audit."""
        try:
            replay = await claim(conn, idem, datetime.now(UTC)) if idem is not None else None
        except PanaversityFSError as reused:  # another request's key: neither record nor release it
            await self._audit.append(conn, file_entry(caller, operation, target, None, None, started, reused))
            return reused
        if replay is not None:
            return replay
        row = await journal.lock(conn, target.key)
        previous = row.sha256 if row is not None else None
        decided: DeleteOutcome | PanaversityFSError
        if row is not None and row.exists and expected not in (None, row.sha256):
            decided = Conflict("expected_hash is not the file's current hash", current_hash=row.sha256)
            entry = file_entry(caller, operation, target, previous, previous, started, decided)
        else:
            if previous is not None:
                await journal.tombstone(conn, target.key, datetime.now(UTC))
            decided = self._delete_outcome(target, previous)
            entry = file_entry(caller, operation, target, previous, None, started)
        await settle(conn, idem, decided)
        await self._audit.append(conn, entry)
        return decided

    def _delete_outcome(self, target: Target, previous: str | None) -> DeleteOutcome:
        return DeleteOutcome(
            book_id=target.book_id,
            path=target.path,
            existed=previous is not None,
            previous_hash=previous,
            user_id=target.user_id,
            source=target.source,  # type: ignore[arg-type]
            namespace=target.source,  # type: ignore[arg-type]
        )
