"""Deleting files under the write protocol: a tombstone and its audit entry in one transaction,
then the object's removal (the publish of a delete; recovery finishes it if this one fails)."""

from __future__ import annotations

from datetime import UTC, datetime

from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.auth.identity import Caller
from panaversity_fs.content.entries import DB_ERRORS, file_entry, unavailable
from panaversity_fs.content.idempotency import Idempotency, Replay, claim, payload
from panaversity_fs.content.publisher import Publisher
from panaversity_fs.content.results import DeleteOutcome
from panaversity_fs.content.target import Target
from panaversity_fs.errors import Conflict, PanaversityFSError
from panaversity_fs.journal import idempotency_repository as idem_sql
from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.engine import Database
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
        refusal: PanaversityFSError | None = None
        replay: Replay | None = None
        outcome: DeleteOutcome | None = None
        try:
            async with self._db.write() as conn:
                try:
                    replay = await claim(conn, idem, datetime.now(UTC)) if idem is not None else None
                except PanaversityFSError as reused:
                    idem, refusal = None, reused
                if replay is None:
                    row = await journal.lock(conn, target.key) if refusal is None else None
                    previous = row.sha256 if row is not None else None
                    if (
                        refusal is None
                        and row is not None
                        and row.exists
                        and expected not in (None, row.sha256)
                    ):
                        refusal = Conflict(
                            "expected_hash is not the file's current hash", current_hash=row.sha256
                        )
                    if refusal is not None:
                        if idem is not None:
                            await idem_sql.release(conn, idem.agent_id, idem.key)
                        entry = file_entry(caller, operation, target, previous, previous, started, refusal)
                    else:
                        if previous is not None:
                            await journal.tombstone(conn, target.key, datetime.now(UTC))
                        entry = file_entry(caller, operation, target, previous, None, started)
                        outcome = self._delete_outcome(target, previous)
                        if idem is not None:
                            await idem_sql.record(conn, idem.agent_id, idem.key, payload(outcome))
                    await self._audit.append(conn, entry)
        except DB_ERRORS as exc:
            self._metrics.delete_total.labels("error").inc()
            raise unavailable("database", exc) from None
        if replay is not None:
            self._metrics.replays.labels(operation).inc()
            return replay.delete()
        if refusal is not None:
            self._metrics.delete_total.labels("refused").inc()
            raise refusal
        assert outcome is not None
        if outcome.existed:
            await self._publisher.publish_or_defer(target.key, None)
        self._metrics.delete_total.labels("success").inc()
        return outcome

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
