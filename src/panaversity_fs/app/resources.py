"""`Resources`: everything a running server owns, built once, in one place, by `open_resources`.

Tools, routes and the command line look services up here; no service builds another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext

from panaversity_fs.app.jobs import start_jobs
from panaversity_fs.archive.service import ArchiveService
from panaversity_fs.assets.common import AssetLinks
from panaversity_fs.assets.downloads import Downloads
from panaversity_fs.assets.service import AssetService
from panaversity_fs.assets.uploads import Uploads
from panaversity_fs.audit.checkpoints import CheckpointSigner, CheckpointStore
from panaversity_fs.audit.query import AuditQueries
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.books.bulk import BulkReader
from panaversity_fs.books.catalog import Catalog
from panaversity_fs.books.search import Searcher
from panaversity_fs.books.validate import Validator
from panaversity_fs.builds.service import BuildService
from panaversity_fs.config import Settings
from panaversity_fs.content.service import Lessons
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.db.migrate import ensure_schema
from panaversity_fs.errors import Unavailable
from panaversity_fs.files.engine import FileEngine
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.versions import VersionStore
from panaversity_fs.history.revert import Reverter
from panaversity_fs.history.service import History
from panaversity_fs.limits import StreamSlots
from panaversity_fs.metrics import Metrics
from panaversity_fs.signing import UrlSigner
from panaversity_fs.storage.blobs import BlobStore, StorageError

logger = logging.getLogger(__name__)

CLOSE_SECONDS = 4.0
"""At most this long to close after the drain: 10 s + 4 s fit Fly's `kill_timeout` of 15 s."""
SLOW_CLOSE_SECONDS = 1.0


@dataclass(frozen=True)
class Resources:
    """The open database, store and services of one process."""

    settings: Settings
    db: Database
    store: BlobStore
    metrics: Metrics
    trail: AuditTrail
    reader: FileReader
    files: FileEngine
    versions: VersionStore
    publisher: Publisher
    signer: UrlSigner
    checkpoints: CheckpointStore
    search_threads: ThreadPoolExecutor
    """Where regex searches run, off the event loop (see `books.regex`)."""
    archive_slots: StreamSlots
    """Archive downloads streaming now (bounded in all and per agent)."""
    lessons: Lessons
    bulk: BulkReader
    catalog: Catalog
    searcher: Searcher
    validator: Validator
    builds: BuildService
    archives: ArchiveService
    assets: AssetService
    uploads: Uploads
    downloads: Downloads
    audit: AuditQueries
    history: History
    reverter: Reverter


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
            raise Unavailable("the server is not ready; retry in a moment", retry_after=1.0)
        return self.resources


def build(
    settings: Settings, db: Database, store: BlobStore, metrics: Metrics, recorder: AuditRecorder
) -> Resources:
    """Wire every service of one process over an open database and store."""
    trail = AuditTrail(db, recorder)
    reader = FileReader(db, store, metrics)
    publisher = Publisher(db, store, metrics)
    versions = VersionStore(db, store)
    files = FileEngine(settings, db, store, publisher, trail, metrics, versions)
    signer = UrlSigner.from_settings(settings)
    checkpoints = CheckpointStore(
        store, CheckpointSigner.from_settings(settings), settings.audit_checkpoints_kept
    )
    threads = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="pfs-search")
    slots = StreamSlots(settings.archive_streams, settings.archive_streams_per_agent)
    links = AssetLinks(settings, signer)
    history = History(settings, db, versions, files, reader, trail)
    return Resources(
        settings=settings,
        db=db,
        store=store,
        metrics=metrics,
        trail=trail,
        reader=reader,
        files=files,
        versions=versions,
        publisher=publisher,
        signer=signer,
        checkpoints=checkpoints,
        search_threads=threads,
        archive_slots=slots,
        lessons=Lessons(settings, files, reader, trail, metrics),
        bulk=BulkReader(settings, db, reader, trail),
        catalog=Catalog(db, trail),
        searcher=Searcher(settings, db, reader, trail, threads),
        validator=Validator(db, store, trail),
        builds=BuildService(settings, db, reader, trail, metrics),
        archives=ArchiveService(settings, db, store, signer, trail, metrics, slots),
        assets=AssetService(settings, db, reader, files, trail, links),
        uploads=Uploads(settings, db, store, files, trail, signer, links, metrics),
        downloads=Downloads(db, store, signer, metrics),
        audit=AuditQueries(db, trail, checkpoints),
        history=history,
        reverter=Reverter(db, files, history),
    )


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
    recorder: AuditRecorder | None = None
    resources: Resources | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await ensure_schema(db, settings.auto_migrate)
        store = BlobStore.from_settings(settings)
        metrics = Metrics()
        _count_failures(db, store, metrics)
        recorder = AuditRecorder(db, settings.audit_read_batch_interval)
        recorder.on_drop = metrics.audit_dropped.inc
        recorder.on_committed = lambda statuses: _count_audit(metrics, statuses)
        resources = build(settings, db, store, metrics, recorder)
        await _learn_books(db, metrics)
        await _learn_capture(resources.versions)
        if recover:
            await _recover(resources)
        if background:
            tasks = start_jobs(
                settings,
                db,
                store,
                metrics,
                recorder,
                resources.publisher,
                resources.checkpoints,
                resources.versions,
            )
        yield resources
    finally:
        if resources is not None:
            resources.search_threads.shutdown(wait=False, cancel_futures=True)
        await _close(tasks, recorder, store, db)


async def _learn_books(db: Database, metrics: Metrics) -> None:
    """Tell the metrics which books exist (their labels); a failure only delays it to /metrics."""
    try:
        async with db.read() as conn:
            metrics.know_books(await journal.base_books(conn))
    except DB_ERRORS:
        logger.warning("could not read the known books; /metrics will learn them", exc_info=True)


async def _learn_capture(versions: VersionStore) -> None:
    """Whether writes must first keep what the history upgrade recorded; on a failure they do."""
    try:
        await versions.start()
    except DB_ERRORS:
        logger.warning("could not tell whether history capture is done; writes will check", exc_info=True)


async def _recover(resources: Resources) -> None:
    """The start-up recovery sweep. A failure is logged and left to the periodic sweep: /ready
    tells the balancer, and a replica that crash-looped while storage blinked would help nobody."""
    grace = timedelta(seconds=resources.settings.recovery_grace)
    try:
        report = await resources.publisher.recover(grace)
    except (StorageError, *DB_ERRORS):
        logger.exception("start-up recovery failed; the periodic sweep will retry")
        return
    if report.published or report.orphans_removed or report.failed:
        logger.info("start-up recovery", extra={"recovery": dataclasses.asdict(report)})


async def _close(
    tasks: list[asyncio.Task[None]], recorder: AuditRecorder | None, store: BlobStore | None, db: Database
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
    if recorder is not None and recorder.queued:
        await step(f"appending {recorder.queued} queued read audit entries", recorder.flush())
    if store is not None:
        await step("storage calls in flight", store.aclose())
    await step("database pool", db.dispose())
    if sum(spent.values()) > SLOW_CLOSE_SECONDS:
        logger.warning("slow shutdown", extra={"seconds": spent})


def _count_audit(metrics: Metrics, statuses: list[str]) -> None:
    for status in statuses:
        metrics.audit_entries_total.labels(status).inc()


def _count_failures(db: Database, store: BlobStore, metrics: Metrics) -> None:
    """Count every failed database statement and storage call as metrics."""

    def count(context: ExceptionContext) -> None:
        metrics.database_errors.labels(type(context.original_exception).__name__).inc()

    for engine in db.transaction_engines:
        event.listen(engine, "handle_error", count)
    store.on_error = lambda kind: metrics.storage_errors.labels(kind).inc()
    # Resolved once: a write makes five storage calls, and `labels` takes a lock each time.
    answered, failed = metrics.storage_calls.labels("ok"), metrics.storage_calls.labels("error")
    store.on_call = lambda ok: (answered if ok else failed).inc()
