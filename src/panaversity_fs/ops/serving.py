"""Running the HTTP server: one process, or several worker processes sharing the port.

One worker is the default. With `workers` > 1, `ops.workers.Supervisor` starts that many
processes, each on its own `SO_REUSEPORT` socket on the port (the kernel spreads connections
over them); each builds its own app from the environment, so each has its own pools, limits
and background checks, exactly like a replica (docs/operations.md). The server is CPU-bound in
Python, so on a machine with several cores more workers serve more calls.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import fastmcp
import uvicorn
from starlette.applications import Starlette

from panaversity_fs.app.server import allowed_hosts, create_app
from panaversity_fs.archive.malloc import pin_mmap_threshold
from panaversity_fs.auth.tokens import build_verifier
from panaversity_fs.config import Settings, settings_from_environment
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.db.migrate import ensure_schema
from panaversity_fs.logs import configure_logging
from panaversity_fs.ops.workers import Supervisor, reuse_port_socket

DRAIN_SECONDS = 10
"""On SIGTERM, calls in flight get this long to finish before they are cancelled (then the
lifespan closes in at most `resources.CLOSE_SECONDS`)."""


class GracefulServer(uvicorn.Server):
    """uvicorn, except that a SIGTERM/SIGINT shutdown ends with status 0.

    uvicorn re-raises the signal after its graceful shutdown, so the process would die
    "killed by SIGTERM"; for us a requested stop that completed cleanly is a success.
    """

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Handle SIGINT/SIGTERM as a graceful exit, without re-raising them afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def freeze_startup_heap() -> None:
    """Exempt everything built so far (modules, schemas, the app) from garbage collection.

    The collector's oldest generation otherwise re-scans those few hundred thousand objects
    that live as long as the process: pauses of ~100 ms under load, which were most of the
    read p99 (L-1 at c=8 on PostgreSQL: p99 ~180 ms -> ~80 ms, same throughput). Garbage is
    collected first so that none of it is kept for good.
    """
    gc.collect()
    gc.freeze()


def no_fastmcp_spans() -> None:
    """Stop FastMCP opening OpenTelemetry spans unless the operator set `FASTMCP_TELEMETRY_MODE`.

    The server ships no OpenTelemetry SDK, so the spans FastMCP opens for each call record
    nothing, yet cost about 18 us of its CPU. FastMCP's `propagation_only` mode opens none and
    still passes on a caller's trace context (its `off` mode costs more: it builds each span's
    attributes anyway). `FASTMCP_TELEMETRY_MODE=native` with an SDK installed turns them back
    on (docs/operations.md).
    """
    if "FASTMCP_TELEMETRY_MODE" not in os.environ:
        fastmcp.settings.telemetry_mode = "propagation_only"


def process_app(settings: Settings) -> Starlette:
    """The app of one serving process, its memory, logging and tracing set up for serving."""
    pin_mmap_threshold()
    configure_logging(settings.log_level)
    no_fastmcp_spans()
    app = create_app(settings)
    freeze_startup_heap()
    return app


async def _schema_ready(settings: Settings) -> bool:
    """Bring the schema to head (if allowed) before serving; False if the database is unreachable.

    Raises:
        ConfigurationError: the schema is newer than this code, or behind and auto-migration is off.
    """
    db = Database.from_settings(settings)
    try:
        await ensure_schema(db, settings.auto_migrate)
    except DB_ERRORS as exc:
        print(f"panaversity-fs serve: the database is unreachable ({type(exc).__name__})", file=sys.stderr)
        return False
    finally:
        await db.dispose()
    return True


def serve(settings: Settings, overrides: dict[str, str]) -> int:
    """Serve until stopped; return the exit status (0 after a requested stop, 3 if startup failed).

    Args:
        settings: the process's settings (command-line overrides applied).
        overrides: environment variables carrying those overrides to worker processes.

    Raises:
        ConfigurationError: the settings cannot start a server, or the database schema is newer
            than this code (checked before any worker starts).
    """
    allowed_hosts(settings)
    build_verifier(settings)
    if not asyncio.run(_schema_ready(settings)):
        return 3
    options = {
        "host": settings.server_host,
        "port": settings.server_port,
        "log_config": None,
        "lifespan": "on",
        "timeout_graceful_shutdown": DRAIN_SECONDS,
        "server_header": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if settings.workers == 1:
        server = GracefulServer(uvicorn.Config(process_app(settings), **options))  # type: ignore[arg-type]
        server.run()
        return 0 if server.started else 3
    configure_logging(settings.log_level)
    try:
        reuse_port_socket(settings.server_host, settings.server_port).close()
    except OSError as exc:
        print(f"panaversity-fs serve: cannot listen on port {settings.server_port} ({exc})", file=sys.stderr)
        return 3
    return Supervisor(settings.workers, run_worker, (overrides, options), DRAIN_SECONDS).run()


def run_worker(overrides: dict[str, str], options: dict[str, Any]) -> None:
    """One of several worker processes: settings from the environment (plus the command line's
    `overrides`), its own `SO_REUSEPORT` socket on the port, one graceful server."""
    os.environ.update(overrides)
    settings = settings_from_environment()
    sock = reuse_port_socket(settings.server_host, settings.server_port)
    server = GracefulServer(uvicorn.Config(process_app(settings), **options))
    server.run(sockets=[sock])
