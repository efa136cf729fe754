"""`panaversity-fs`: serve, migrate, verify the audit chain, recover leftovers, import, hydrate,
mint development tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from panaversity_fs.config import Settings, settings_from_environment
from panaversity_fs.errors import ConfigurationError

if TYPE_CHECKING:
    from panaversity_fs.audit.checkpoints import CheckpointStore
    from panaversity_fs.db.engine import Database

_OVERRIDES = (
    "server_host",
    "server_port",
    "database_url",
    "storage_backend",
    "storage_root",
    "log_level",
    "workers",
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line."""
    return {name: value for name in _OVERRIDES if (value := getattr(args, name, None)) is not None}


def _override_env(args: argparse.Namespace) -> dict[str, str]:
    """The command-line overrides as environment variables (for worker processes)."""
    return {f"PANAVERSITY_{name.upper()}": str(value) for name, value in _overrides(args).items()}


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_environment(**_overrides(args))


def _serve(args: argparse.Namespace) -> int:
    from panaversity_fs.ops.serving import serve

    settings = _settings(args)
    return serve(settings, _override_env(args))


async def _db(args: argparse.Namespace) -> int:
    from panaversity_fs.db.engine import Database
    from panaversity_fs.db.migrate import current_revision, ensure_schema, head_revision, upgrade

    settings = _settings(args)
    db = Database.from_settings(settings)
    try:
        if args.db_command == "upgrade":
            from alembic.util import CommandError

            try:
                await upgrade(db, args.revision)
            except CommandError as exc:
                # E.g. a database migrated by a newer release: its revision is unknown here.
                print(f"panaversity-fs db upgrade: {exc}", file=sys.stderr)
                return 2
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
    from pathlib import Path

    from panaversity_fs.audit.checkpoints import (
        Checkpoint,
        CheckpointError,
        CheckpointSigner,
        CheckpointStore,
    )
    from panaversity_fs.audit.verify import verify_everything
    from panaversity_fs.db.engine import Database
    from panaversity_fs.storage.blobs import BlobStore

    settings = _settings(args)
    supplied: list[Checkpoint] = []
    against: list[str] = getattr(args, "against", None) or []
    for name in against:
        try:
            supplied.append(Checkpoint.parse(await asyncio.to_thread(Path(name).read_bytes)))
        except (OSError, CheckpointError) as exc:
            print(f"panaversity-fs audit: cannot use checkpoint {name}: {exc}", file=sys.stderr)
            return 2
    signer = CheckpointSigner.from_settings(settings)
    db = Database.from_settings(settings)
    store = None if getattr(args, "no_checkpoints", False) else BlobStore.from_settings(settings)
    try:
        checkpoints = (
            CheckpointStore(store, signer, settings.audit_checkpoints_kept) if store is not None else None
        )
        if args.audit_command == "retire-checkpoints":
            assert checkpoints is not None
            return await _retire_checkpoints(db, checkpoints, args.yes)
        result = await verify_everything(db, signer, checkpoints, supplied)
        if args.audit_command == "checkpoint":
            if not result.ok or checkpoints is None:
                print(json.dumps(result.as_dict()), file=sys.stderr)
                print("panaversity-fs audit: the chain does not verify; no checkpoint made", file=sys.stderr)
                return 1
            if result.chain.head_seq == 0:
                print("panaversity-fs audit: the chain is empty; nothing to checkpoint", file=sys.stderr)
                return 1
            assert result.chain.last_hash is not None
            print((await checkpoints.write(result.chain.head_seq, result.chain.last_hash)).to_json())
            return 0
    finally:
        if store is not None:
            store.close()
        await db.dispose()
    print(json.dumps(result.as_dict()))
    return 0 if result.ok else 1


async def _retire_checkpoints(db: Database, checkpoints: CheckpointStore, yes: bool) -> int:
    from panaversity_fs.audit.verify import verify_connection

    async with db.read() as conn:
        chain = await verify_connection(conn)
        stale = await checkpoints.mismatched(conn)
    if not chain.ok:
        print(json.dumps(chain.as_dict()), file=sys.stderr)
        print("panaversity-fs audit: the chain itself does not verify; nothing retired", file=sys.stderr)
        return 1
    if not yes:
        print(json.dumps({"would_retire": stale}))
        return 0
    moved_to = await checkpoints.retire(stale) if stale else None
    print(json.dumps({"retired": stale, "to": moved_to}))
    return 0


async def _recover(args: argparse.Namespace) -> int:
    from panaversity_fs.app.resources import open_resources

    settings = _settings(args)
    async with open_resources(settings, background=False) as resources:
        grace = settings.recovery_grace if args.grace is None else args.grace
        report = await resources.publisher.recover(timedelta(seconds=grace))
    print(json.dumps(dataclasses.asdict(report)))
    return 0 if report.failed == 0 else 1


async def _fsck(args: argparse.Namespace) -> int:
    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.files.fsck import check, repair

    settings = _settings(args)
    grace = timedelta(seconds=settings.recovery_grace if args.grace is None else args.grace)
    async with open_resources(settings, background=False, recover=False) as resources:
        report = await check(resources.db, resources.store, args.book, grace)
        if not args.repair:
            print(json.dumps(report.as_dict()))
            return 0 if report.ok else 1
        repaired = await repair(resources.db, resources.store, resources.publisher, report, grace)
        after = await check(resources.db, resources.store, args.book, grace)
    print(json.dumps({"found": report.as_dict(), "repair": repaired.as_dict(), "after": after.as_dict()}))
    return 0 if after.ok else 1


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.auth.identity import check_agent_id
    from panaversity_fs.errors import PanaversityFSError
    from panaversity_fs.ops.importer import ROOTS, Importer, ImportReport, terminal_progress
    from panaversity_fs.paths import check_book_id

    folder = Path(args.folder)
    try:
        book_id = check_book_id(args.book_id)
        agent_id = check_agent_id(args.agent)
    except PanaversityFSError as error:
        print(f"panaversity-fs import: {error.message}", file=sys.stderr)
        return 2
    if not folder.is_dir() or not any((folder / root).is_dir() for root in ROOTS):
        print(f"panaversity-fs import: {folder} has neither content/ nor static/", file=sys.stderr)
        return 2
    settings = _settings(args)

    async def run() -> ImportReport:
        async with open_resources(settings, background=False) as resources:
            importer = Importer(resources, book_id, agent_id, args.dry_run, terminal_progress("importing"))
            return await importer.run(folder)

    report = asyncio.run(run())
    summary = report.as_dict()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        verb = "would import" if args.dry_run else "imported"
        print(
            f"{book_id}: {verb} {summary['created']} new, {summary['updated']} updated; "
            f"{summary['unchanged']} unchanged; {summary['rejected']} rejected"
        )
        for item in summary["rejected_files"]:
            print(f"  rejected {item['path']}: {item['reason']} -> {item['suggestion']}")
    return 0 if report.ok else 1


def _hydrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import httpx
    from fastmcp import Client
    from mcp_types import Implementation

    from panaversity_fs.errors import PanaversityFSError
    from panaversity_fs.ops.hydrator import HydrateError, HydrateReport, Hydrator
    from panaversity_fs.ops.importer import terminal_progress
    from panaversity_fs.paths import check_book_id

    try:
        book_id = check_book_id(args.book_id)
    except PanaversityFSError as error:
        print(f"panaversity-fs hydrate: {error.message}", file=sys.stderr)
        return 2
    server = args.server.rstrip("/")
    if not server.startswith(("http://", "https://")):
        print("panaversity-fs hydrate: --server must be an http(s) URL", file=sys.stderr)
        return 2
    folder = Path(args.folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"panaversity-fs hydrate: cannot create {folder}: {exc.strerror}", file=sys.stderr)
        return 2
    client: Client[Any] = Client(
        f"{server}/mcp",
        client_info=Implementation(name="panaversity-fs-hydrate", version="1"),
        auth=args.token,
        timeout=120,
    )

    async def run() -> HydrateReport:
        async with client, httpx.AsyncClient(timeout=120) as http:
            progress = terminal_progress("downloading")
            return await Hydrator(client, http, book_id, folder, server, progress, args.token).run()

    try:
        report = asyncio.run(run())
    except (HydrateError, httpx.HTTPError, OSError, RuntimeError) as exc:
        print(f"panaversity-fs hydrate: {exc}", file=sys.stderr)
        return 1
    summary = report.as_dict()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{book_id}: {summary['downloaded']} downloaded, {summary['deleted']} deleted, "
            f"{summary['unchanged']} unchanged, {summary['failed']} failed"
        )
        for item in summary["failures"]:
            print(f"  failed {item['path']}: {item['reason']}")
    return 0 if report.ok else 1


def _token(args: argparse.Namespace) -> int:
    from panaversity_fs.auth.tokens import mint_token
    from panaversity_fs.errors import PanaversityFSError

    books = [b.strip() for b in args.books.split(",") if b.strip()] if args.books is not None else None
    try:
        print(mint_token(_settings(args), args.sub, args.scope, args.user_id, books, args.ttl))
    except PanaversityFSError as exc:
        print(f"panaversity-fs token: {exc.message}", file=sys.stderr)
        return 2
    return 0


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
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade the schema (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_commands.add_parser("current", help="print the current and head revisions")
    db_commands.add_parser("check", help="exit 1 unless the schema is at head")

    audit = commands.add_parser("audit", help="audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="verify the hash chain and its checkpoints (exit 1 if anything is broken)"
    )
    verify.add_argument(
        "--against",
        action="append",
        metavar="CHECKPOINT",
        help="also compare with this checkpoint file (JSON, as `audit checkpoint` prints); repeatable",
    )
    verify.add_argument(
        "--no-checkpoints", action="store_true", help="skip the checkpoints stored in storage"
    )
    audit_commands.add_parser(
        "checkpoint", help="verify the chain, then sign, store and print a checkpoint of its head"
    )
    retire = audit_commands.add_parser(
        "retire-checkpoints",
        help="after restoring an older database: move the stored checkpoints the chain no longer "
        "matches aside (.pfs/checkpoints-retired/); prints them, moves them only with --yes",
    )
    retire.add_argument("--yes", action="store_true", help="really move them")

    fsck = commands.add_parser("fsck", help="compare journal and storage (exit 1 on any problem)")
    fsck.add_argument("--book", help="check one book only")
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="finish pending publishes, remove stale staging, quarantine orphaned objects older "
        "than the grace period (journal rows are never deleted); exit 1 if problems remain",
    )
    fsck.add_argument(
        "--grace",
        type=float,
        help="seconds: anything younger belongs to a write in flight and is left alone "
        "(default: PANAVERSITY_RECOVERY_GRACE)",
    )

    importer = commands.add_parser(
        "import", help="import a book folder (content/, static/); exit 1 if files were rejected"
    )
    importer.add_argument("book_id")
    importer.add_argument("folder")
    importer.add_argument("--agent", default="panaversity-fs-import", help="agent id for the audit")
    importer.add_argument("--dry-run", action="store_true", help="report what would change")
    importer.add_argument("--json", action="store_true", help="print the summary as JSON")

    hydrate = commands.add_parser("hydrate", help="update a local book folder from a running server")
    hydrate.add_argument("book_id")
    hydrate.add_argument("folder")
    hydrate.add_argument("--server", required=True, help="server base URL, e.g. http://host:8000")
    hydrate.add_argument("--token", default=os.environ.get("PANAVERSITY_TOKEN"), help="bearer token")
    hydrate.add_argument("--json", action="store_true", help="print the summary as JSON")

    token = commands.add_parser(
        "token", help="print a development bearer token signed with PANAVERSITY_JWT_SECRET"
    )
    token.add_argument("--sub", required=True, help="agent id (the token's sub)")
    token.add_argument("--scope", default="fs:read fs:write", help='e.g. "fs:read" or "fs:admin"')
    token.add_argument("--user-id", dest="user_id", help="bind the token to this user's overlay")
    token.add_argument("--books", help="comma-separated book ids the token may use")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")

    recover = commands.add_parser("recover", help="finish pending publishes, remove orphans")
    recover.add_argument(
        "--grace", type=float, help="orphan age in seconds (default: PANAVERSITY_RECOVERY_GRACE)"
    )
    return parser


def run() -> NoReturn:
    """The `panaversity-fs` executable: run `main`, flush output, end the process.

    The process ends with `os._exit` rather than interpreter finalisation. OpenDAL's Tokio
    threads may still be handing a finished async call back to Python at that moment, and on
    CPython < 3.14 a foreign thread that takes the GIL during finalisation is killed with
    `pthread_exit`, which aborts through the Rust frames (SIGABRT, about 1 run in 30 here).
    Everything worth finishing (database pools, stores, logs) is closed by `main` itself.
    """
    try:
        status = main()
    except SystemExit as exc:  # argparse's --help and usage errors
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


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
        if args.command == "import":
            return _import(args)
        if args.command == "hydrate":
            return _hydrate(args)
        if args.command == "token":
            return _token(args)
        return asyncio.run(_recover(args))
    except ConfigurationError as exc:
        print(f"panaversity-fs: configuration error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"panaversity-fs: configuration error: {settings_problems(exc)}", file=sys.stderr)
        return 2


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, one `field: reason` per problem, never the values given
    (a rejected value may be a secret)."""
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)
    ]
    return "; ".join(problems)
