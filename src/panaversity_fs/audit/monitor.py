"""The server's own watch over the audit chain: verify what was appended, then checkpoint it.

Each run verifies the entries appended since the last run (the first run of a process verifies
the whole chain), compares the chain with the stored checkpoints, exports the verdict as
`panaversityfs_audit_chain_valid`, and, only when everything verified and the chain grew, signs
and stores a checkpoint of the head. A checkpoint is therefore never made of a broken chain.
Edits to entries older than the last run are found by the next full verification
(`panaversity-fs audit verify`, the `verify_audit` tool, or a restart).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from panaversity_fs.audit.chain import GENESIS_HASH
from panaversity_fs.audit.checkpoints import CheckpointReport, CheckpointStore
from panaversity_fs.audit.verify import verify_connection
from panaversity_fs.db.engine import Database
from panaversity_fs.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchResult:
    """One run: whether the chain verified, how far, and the checkpoint written (if any)."""

    ok: bool
    head_seq: int
    entries_checked: int
    checkpoints: CheckpointReport
    checkpoint_written: int | None


class ChainMonitor:
    """Incremental verification and checkpointing of the audit chain, for one process."""

    def __init__(self, db: Database, checkpoints: CheckpointStore, metrics: Metrics) -> None:
        self._db = db
        self._checkpoints = checkpoints
        self._metrics = metrics
        self._verified: tuple[int, str] | None = None

    async def run_once(self) -> WatchResult:
        """Verify new entries and the checkpoints; checkpoint the head if all is well.

        Raises:
            StorageError: storage failed (checkpoints could not be read or written).
            sqlalchemy errors: the database failed.
        """
        async with self._db.read() as conn:
            report = await verify_connection(conn, start=self._verified or (0, GENESIS_HASH))
            against = await self._checkpoints.check(conn)
        ok = report.ok and against.ok
        self._metrics.audit_chain_valid.set(1 if ok else 0)
        if not ok:
            self._verified = None  # verify everything again next time
            logger.error(
                "audit chain does not verify",
                extra={"chain": report.as_dict(), "checkpoints": against.as_dict()},
            )
            return WatchResult(False, report.head_seq, report.entries_checked, against, None)
        assert report.last_hash is not None
        self._verified = (report.head_seq, report.last_hash)
        written: int | None = None
        if report.head_seq > (against.verified_seq or 0):
            written = (await self._checkpoints.write(report.head_seq, report.last_hash)).seq
            self._metrics.audit_checkpoint_seq.set(written)
        return WatchResult(True, report.head_seq, report.entries_checked, against, written)
