"""The operators' routes: `/health` (alive), `/ready` (database and storage answer), `/metrics`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from panaversity_fs import __version__
from panaversity_fs.app.resources import Resources, ServerState
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS

logger = logging.getLogger(__name__)

JOURNAL_COUNT_EVERY = 15.0
"""Seconds between two reads of the per-book file counts (scrapes in between reuse them)."""


def register_routes(mcp: FastMCP, state: ServerState, load: Callable[[], tuple[int, int]]) -> None:
    """Register `/health`, `/ready` and `/metrics`; `load` tells the calls running and waiting."""

    @mcp.custom_route("/health", methods=["GET"])
    async def health(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse({"status": "ok", "version": __version__})

    @mcp.custom_route("/ready", methods=["GET"])
    async def ready(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        resources = state.resources
        if resources is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        checks: dict[str, str] = {}
        try:
            async with resources.db.read() as conn:
                await conn.exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        try:
            await resources.store.check()
            checks["storage"] = "ok"
        except Exception:
            checks["storage"] = "unavailable"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503
        )

    journal_counted = [0.0]  # when the per-book file counts were last read

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        resources = state.resources
        if resources is None:
            return Response("", status_code=503)
        if time.monotonic() - journal_counted[0] > JOURNAL_COUNT_EVERY:
            journal_counted[0] = time.monotonic()
            await _count_journal(resources)
        resources.metrics.audit_queue.set(resources.trail.recorder.queued)
        running, waiting = load()
        resources.metrics.calls_running.set(running)
        resources.metrics.calls_waiting.set(waiting)
        return Response(resources.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _count_journal(resources: Resources) -> None:
    """Refresh `panaversityfs_journal_entries_total` and the known books; a slow or failing
    database keeps the last values."""
    try:
        async with asyncio.timeout(2.0), resources.db.read() as conn:
            counts = await journal.live_files_by_book(conn)
    except (TimeoutError, *DB_ERRORS):
        logger.warning("could not count journal entries for /metrics", exc_info=True)
        return
    metrics = resources.metrics
    metrics.know_books(book for book, _count, has_base in counts if has_base)
    per_label: dict[str, int] = {}
    for book_id, count, _has_base in counts:
        label = metrics.book(book_id)
        per_label[label] = per_label.get(label, 0) + count
    for label, count in per_label.items():
        metrics.journal_entries.labels(label).set(count)
