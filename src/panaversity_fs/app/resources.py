"""`Resources`: everything a running server owns, opened and closed by its lifespan."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext

from panaversity_fs.app.limits import StreamSlots
from panaversity_fs.audit.checkpoints import CheckpointSigner, CheckpointStore
from panaversity_fs.audit.monitor import ChainMonitor
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.config import Settings
from panaversity_fs.content.service import ContentService
from panaversity_fs.db import idempotency_sql as idem_sql
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.audit_sql import watch_appends
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.db.migrate import ensure_schema
from panaversity_fs.errors import Unavailable
from panaversity_fs.files.fsck import check
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.metrics import Metrics
from panaversity_fs.signing import UrlSigner
from panaversity_fs.storage.blobs import BlobStore, StorageError

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 4.0
"""At most this long to close after the drain: 10 s + 4 s fit Fly's `kill_timeout` of 15 s."""
SLOW_CLOSE_SECONDS = 1.0


@dataclass(frozen=True)
class Resources:
    """The open database, store and services of one server process."""

    settings: Settings
    db: Database
    store: BlobStore
    metrics: Metrics
    audit: AuditRecorder
    publisher: Publisher
    content: ContentService
    signer: UrlSigner
    checkpoints: CheckpointStore
    search_threads: ThreadPoolExecutor
    """Where regex searches run, off the event loop (see `books.search`)."""
    archive_slots: StreamSlots
    """Archive downloads streaming now (bounded in all and per agent)."""


@dataclass
class ServerState:
    """Holder the tools and routes read `Resources` from while the lifespan is open."""

    resources: Resources | None = None

    def require(self) -> Resources:
        """Return the open resources.

        Raises:
            Unavailable: the server is starting or stopping.
        """
        if self.resources is None:
            raise Unavailable("the server is not ready")
        return self.resources


@asynccontextmanager
async def open_resources(
    settings: Settings, background: bool = True, recover: bool = True
) -> AsyncGenerator[Resources, None]:
    """Open database and storage, bring the schema to head, recover, start background work.

    Args:
        settings: what to open.
        background: start the audit batcher and the periodic sweeps and checks.
        recover: run a recovery sweep before yielding (fsck turns it off to see the leftovers).

    Raises:
        ConfigurationError: the schema is newer than this code, or the storage root is unsafe.
    """
    db = Database.from_settings(settings)
    store: BlobStore | None = None
    audit: AuditRecorder | None = None
    tasks: list[asyncio.Task[None]] = []
    search_threads = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="pfs-search")
    try:
        await ensure_schema(db, settings.auto_migrate)
        store = BlobStore.from_settings(settings)
        metrics = Metrics()
        store.on_error = lambda kind: metrics.storage_errors.labels(kind).inc()
        store.on_call = lambda ok: metrics.storage_calls.labels("ok" if ok else "error").inc()
        _count_database_errors(db, metrics)
        watch_appends(db.engine, lambda statuses: _count_audit(metrics, statuses))
        audit = AuditRecorder(db, settings.audit_read_batch_interval)
        audit.on_drop = metrics.audit_dropped.inc
        publisher = Publisher(db, store, metrics)
        content = ContentService(settings, db, store, publisher, audit, metrics)
        signer = UrlSigner.from_settings(settings)
        checkpoints = CheckpointStore(
            store, CheckpointSigner.from_settings(settings), settings.audit_checkpoints_kept
        )
        slots = StreamSlots(settings.archive_streams, settings.archive_streams_per_agent)
        resources = Resources(
            settings,
            db,
            store,
            metrics,
            audit,
            publisher,
            content,
            signer,
            checkpoints,
            search_threads,
            slots,
        )
        try:
            async with db.read() as conn:
                metrics.know_books(await journal.base_books(conn))
        except DB_ERRORS:
            logger.warning("could not read the known books; /metrics will learn them", exc_info=True)
        grace = timedelta(seconds=settings.recovery_grace)
        if recover:
            try:
                report = await publisher.recover(grace)
            except (StorageError, *DB_ERRORS):
                # Serve anyway (/ready tells the balancer): the periodic sweep retries, and a
                # replica that crash-looped while storage blinked would help nobody.
                logger.exception("start-up recovery failed; the periodic sweep will retry")
            else:
                if report.published or report.orphans_removed or report.failed:
                    logger.info("start-up recovery", extra={"recovery": dataclasses.asdict(report)})
        if background:

            def every(
                name: str,
                interval: float,
                what: str,
                job: Callable[[], Awaitable[object]],
                first: float | None = None,
            ) -> None:
                tasks.append(asyncio.create_task(_every(interval, what, job, first), name=name))

            tasks.append(asyncio.create_task(audit.run(), name="pfs-audit-batcher"))
            every(
                "pfs-recovery", settings.recovery_interval, "recovery sweep", lambda: publisher.recover(grace)
            )
            every(
                "pfs-idempotency-prune",
                settings.recovery_interval,
                "idempotency key pruning",
                lambda: _prune_keys(resources),
            )
            if settings.fsck_interval > 0:
                every(
                    "pfs-fsck",
                    settings.fsck_interval,
                    "consistency check",
                    lambda: _check_consistency(resources),
                )
            if settings.audit_checkpoint_interval > 0:
                monitor = ChainMonitor(db, checkpoints, metrics)
                interval = settings.audit_checkpoint_interval
                every(
                    "pfs-audit-monitor", interval, "audit check", monitor.run_once, first=min(5.0, interval)
                )
        yield resources
    finally:
        search_threads.shutdown(wait=False, cancel_futures=True)
        await _close(tasks, audit, store, db)


async def _close(
    tasks: list[asyncio.Task[None]], audit: AuditRecorder | None, store: BlobStore | None, db: Database
) -> None:
    """Stop background work, append queued read audit entries, close storage and the database.

    All of it takes at most `CLOSE_SECONDS`: after uvicorn's drain a stalled database or store
    must not keep a stopping process past its orchestrator's kill timeout (docs/operations.md).
    A step cut short is logged, and so is a slow shutdown, with the time of each step.
    """
    deadline = time.monotonic() + CLOSE_SECONDS
    spent: dict[str, float] = {}

    async def step(name: str, work: Awaitable[object]) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(work, max(0.05, deadline - started))
        except TimeoutError:
            logger.warning("shutdown: %s cut short (%.0f s to close in all)", name, CLOSE_SECONDS)
        except Exception:
            logger.exception("shutdown: %s failed", name)
        spent[name] = round(time.monotonic() - started, 2)

    for task in tasks:
        task.cancel()
    await step("background tasks", asyncio.gather(*tasks, return_exceptions=True))
    if audit is not None and audit.queued:
        await step(f"appending {audit.queued} queued read audit entries", audit.flush())
    if store is not None:
        await step("storage calls in flight", store.aclose())
    await step("database pool", db.dispose())
    if sum(spent.values()) > SLOW_CLOSE_SECONDS:
        logger.warning("slow shutdown", extra={"seconds": spent})


def _count_audit(metrics: Metrics, statuses: list[str]) -> None:
    for status in statuses:
        metrics.audit_entries_total.labels(status).inc()


def _count_database_errors(db: Database, metrics: Metrics) -> None:
    def count(context: ExceptionContext) -> None:
        metrics.database_errors.labels(type(context.original_exception).__name__).inc()

    event.listen(db.engine.sync_engine, "handle_error", count)


async def _prune_keys(resources: Resources) -> None:
    """Forget idempotency keys older than `idempotency_ttl`."""
    cutoff = datetime.now(UTC) - timedelta(seconds=resources.settings.idempotency_ttl)
    async with resources.db.write() as conn:
        await idem_sql.prune(conn, cutoff)


async def _check_consistency(resources: Resources) -> None:
    """The periodic, read-only fsck; its problem counts become metrics."""
    started = time.monotonic()
    report = await check(
        resources.db, resources.store, grace=timedelta(seconds=resources.settings.recovery_grace)
    )
    metrics = resources.metrics
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
