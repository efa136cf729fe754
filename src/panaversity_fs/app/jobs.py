"""The server's background work: read-audit batches, recovery, key pruning, checks, checkpoints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from panaversity_fs.audit.checkpoints import CheckpointStore
from panaversity_fs.audit.monitor import ChainMonitor
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.config import Settings
from panaversity_fs.db import idempotency_sql
from panaversity_fs.db.engine import Database
from panaversity_fs.files.fsck import check
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.versions import VersionStore, retention_of
from panaversity_fs.metrics import Metrics
from panaversity_fs.storage.blobs import BlobStore

logger = logging.getLogger(__name__)


def start_jobs(
    settings: Settings,
    db: Database,
    store: BlobStore,
    metrics: Metrics,
    recorder: AuditRecorder,
    publisher: Publisher,
    checkpoints: CheckpointStore,
    versions: VersionStore,
) -> list[asyncio.Task[None]]:
    """Start every background job of one server process; the caller cancels the tasks."""
    grace = timedelta(seconds=settings.recovery_grace)
    tasks = [
        asyncio.create_task(recorder.run(), name="pfs-audit-batcher"),
        asyncio.create_task(_capture(versions), name="pfs-history-capture"),
    ]

    def every(
        name: str, interval: float, job: Callable[[], Awaitable[object]], first: float | None = None
    ) -> None:
        tasks.append(asyncio.create_task(_every(interval, name, job, first), name=f"pfs-{name}"))

    every("recovery", settings.recovery_interval, lambda: publisher.recover(grace))
    every("idempotency-prune", settings.recovery_interval, lambda: _prune_keys(db, settings.idempotency_ttl))
    if settings.fsck_interval > 0:
        every(
            "consistency-check",
            settings.fsck_interval,
            lambda: _check_consistency(settings, db, store, metrics, versions, grace),
        )
    if settings.audit_checkpoint_interval > 0:
        monitor = ChainMonitor(db, checkpoints, metrics)
        interval = settings.audit_checkpoint_interval
        every("audit-monitor", interval, monitor.run_once, first=min(5.0, interval))
    return tasks


async def _prune_keys(db: Database, ttl: float) -> None:
    """Forget idempotency keys older than `ttl` seconds."""
    cutoff = datetime.now(UTC) - timedelta(seconds=ttl)
    async with db.write() as tx:
        await idempotency_sql.prune(tx.conn, cutoff)


async def _capture(versions: VersionStore) -> None:
    """Copy in the bytes of the versions the history upgrade recorded (once, after start-up)."""
    try:
        captured = await versions.capture_all()
    except Exception:
        logger.exception("capturing the upgrade's versions failed; writes capture what they replace")
        return
    if captured:
        logger.info("captured the versions recorded by the history upgrade", extra={"count": captured})


async def _check_consistency(
    settings: Settings,
    db: Database,
    store: BlobStore,
    metrics: Metrics,
    versions: VersionStore,
    grace: timedelta,
) -> None:
    """The periodic fsck: its problem counts become metrics; expired versions are collected (the
    only thing it changes)."""
    started = time.monotonic()
    kept = retention_of(settings)
    await versions.collect(kept, grace)
    report = await check(db, store, grace=grace, retention=kept)
    for kind, count in report.counts().items():
        metrics.fsck_problems.labels(kind).set(count)
    metrics.fsck_last_run.set_to_current_time()
    metrics.fsck_duration.set(time.monotonic() - started)
    if not report.ok:
        logger.warning(
            "journal and storage disagree; run `panaversity-fs fsck`", extra={"fsck": report.counts()}
        )


async def _every(
    interval: float, what: str, job: Callable[[], Awaitable[object]], first: float | None = None
) -> None:
    """Run `job` after `first` seconds (default `interval`), then every `interval` seconds,
    forever; a failed run is logged and retried next time."""
    await asyncio.sleep(interval if first is None else first)
    while True:
        try:
            await job()
        except Exception:
            logger.exception("%s failed; will retry", what)
        await asyncio.sleep(interval)
