"""`Resources`: everything a running server owns, opened and closed by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.config import Settings
from panaversity_fs.content.publisher import Publisher
from panaversity_fs.content.service import ContentService
from panaversity_fs.errors import Unavailable
from panaversity_fs.journal.engine import Database
from panaversity_fs.journal.migrate import ensure_schema
from panaversity_fs.metrics import Metrics
from panaversity_fs.storage.blobs import BlobStore

logger = logging.getLogger(__name__)


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
async def open_resources(settings: Settings, background: bool = True) -> AsyncGenerator[Resources, None]:
    """Open database and storage, bring the schema to head, recover, start background work.

    Raises:
        ConfigurationError: the schema is newer than this code, or the storage root is unsafe.
    """
    db = Database.from_settings(settings)
    store: BlobStore | None = None
    audit: AuditRecorder | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await ensure_schema(db, settings.auto_migrate)
        store = BlobStore.from_settings(settings)
        metrics = Metrics()
        audit = AuditRecorder(db, settings.audit_read_batch_interval)
        publisher = Publisher(db, store, metrics)
        content = ContentService(settings, db, store, publisher, audit, metrics)
        resources = Resources(settings, db, store, metrics, audit, publisher, content)
        grace = timedelta(seconds=settings.recovery_grace)
        report = await publisher.recover(grace)
        if report.published or report.orphans_removed or report.failed:
            logger.info("start-up recovery", extra={"recovery": dataclasses.asdict(report)})
        if background:
            tasks.append(asyncio.create_task(audit.run(), name="pfs-audit-batcher"))
            tasks.append(asyncio.create_task(_recover_forever(resources), name="pfs-recovery"))
        yield resources
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if audit is not None and audit.queued:
            try:
                await audit.flush()
            except Exception:
                logger.exception("could not append %d queued read audit entries at exit", audit.queued)
        if store is not None:
            store.close()
        await db.dispose()


async def _recover_forever(resources: Resources) -> None:
    grace = timedelta(seconds=resources.settings.recovery_grace)
    while True:
        await asyncio.sleep(resources.settings.recovery_interval)
        try:
            await resources.publisher.recover(grace)
        except Exception:
            logger.exception("recovery sweep failed; will retry")
