"""`panaversity-fs`: serve, migrate, verify the audit chain, recover leftovers."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in (
        "server_host",
        "server_port",
        "database_url",
        "storage_backend",
        "storage_root",
        "log_level",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading
    from collections.abc import Generator
    from contextlib import contextmanager

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, except that a SIGTERM/SIGINT shutdown ends with status 0.

        uvicorn re-raises the signal after its graceful shutdown, so the process would die
        "killed by SIGTERM"; for us a requested stop that completed cleanly is a success.
        """

        @contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
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

    from panaversity_fs.logs import configure_logging
    from panaversity_fs.server import create_app

    settings = _settings(args)
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = Server(config)
    server.run()
    return 0 if server.started else 3


async def _db(args: argparse.Namespace) -> int:
    from panaversity_fs.journal.engine import Database
    from panaversity_fs.journal.migrate import current_revision, ensure_schema, head_revision, upgrade

    settings = _settings(args)
    db = Database.from_settings(settings)
    try:
        if args.db_command == "upgrade":
            await upgrade(db, args.revision)
            print(f"database at {await current_revision(db)}")
            return 0
        current = await current_revision(db)
        head = head_revision()
        if args.db_command == "current":
            print(json.dumps({"current": current, "head": head}))
            return 0
        if current != head:
            print(f"database at {current!r}, code expects {head!r}", file=sys.stderr)
            return 1
        await ensure_schema(db, auto_migrate=False)
        print(f"database at head ({head})")
        return 0
    finally:
        await db.dispose()


async def _audit(args: argparse.Namespace) -> int:
    from panaversity_fs.audit.verify import verify_database
    from panaversity_fs.journal.engine import Database

    db = Database.from_settings(_settings(args))
    try:
        report = await verify_database(db)
    finally:
        await db.dispose()
    print(json.dumps(report.as_dict()))
    return 0 if report.ok else 1


async def _recover(args: argparse.Namespace) -> int:
    from panaversity_fs.resources import open_resources

    settings = _settings(args)
    async with open_resources(settings, background=False) as resources:
        report = await resources.publisher.recover(timedelta(seconds=args.grace))
    print(json.dumps(dataclasses.asdict(report)))
    return 0 if report.failed == 0 else 1


async def _fsck(args: argparse.Namespace) -> int:
    from panaversity_fs.consistency.fsck import check
    from panaversity_fs.journal.engine import Database
    from panaversity_fs.storage.blobs import BlobStore

    settings = _settings(args)
    db = Database.from_settings(settings)
    store = BlobStore.from_settings(settings)
    try:
        report = await check(db, store, args.book)
    finally:
        store.close()
        await db.dispose()
    print(json.dumps(report.as_dict()))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `panaversity-fs`."""
    parser = argparse.ArgumentParser(prog="panaversity-fs", description=__doc__)
    parser.add_argument("--database-url", dest="database_url", help="overrides DATABASE_URL")
    parser.add_argument("--storage-backend", dest="storage_backend", choices=["fs", "s3"])
    parser.add_argument("--storage-root", dest="storage_root", help="fs backend root folder")
    parser.add_argument("--log-level", dest="log_level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server over streamable HTTP")
    serve.add_argument("--host", dest="server_host")
    serve.add_argument("--port", dest="server_port", type=int)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade the schema (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_commands.add_parser("current", help="print the current and head revisions")
    db_commands.add_parser("check", help="exit 1 unless the schema is at head")

    audit = commands.add_parser("audit", help="audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="verify the whole hash chain (exit 1 if broken)")

    fsck = commands.add_parser("fsck", help="compare journal and storage (exit 1 on any problem)")
    fsck.add_argument("--book", help="check one book only")

    recover = commands.add_parser("recover", help="finish pending publishes, remove orphans")
    recover.add_argument("--grace", type=float, default=300.0, help="orphan age in seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "db":
            return asyncio.run(_db(args))
        if args.command == "audit":
            return asyncio.run(_audit(args))
        if args.command == "fsck":
            return asyncio.run(_fsck(args))
        return asyncio.run(_recover(args))
    except (ConfigurationError, ValidationError) as exc:
        print(f"panaversity-fs: configuration error: {exc}", file=sys.stderr)
        return 2
