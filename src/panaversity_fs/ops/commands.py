"""The handlers of the `panaversity-fs` subcommands: one function per command, each returning
the process exit status. `ops.cli` parses the arguments and dispatches to them."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from panaversity_fs.config import Settings, settings_from_environment

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


def serve(args: argparse.Namespace) -> int:
    """`serve`: run the MCP server until stopped."""
    from panaversity_fs.ops.serving import serve

    settings = _settings(args)
    return serve(settings, _override_env(args))


def db(args: argparse.Namespace) -> int:
    """`db upgrade|current|check`."""
    return asyncio.run(_db(args))


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


def audit(args: argparse.Namespace) -> int:
    """`audit verify|checkpoint|retire-checkpoints`."""
    return asyncio.run(_audit(args))


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


def recover(args: argparse.Namespace) -> int:
    """`recover`: finish pending publishes, remove orphans."""
    return asyncio.run(_recover(args))


async def _recover(args: argparse.Namespace) -> int:
    from panaversity_fs.app.resources import open_resources

    settings = _settings(args)
    async with open_resources(settings, background=False) as resources:
        grace = settings.recovery_grace if args.grace is None else args.grace
        report = await resources.publisher.recover(timedelta(seconds=grace))
    print(json.dumps(dataclasses.asdict(report)))
    return 0 if report.failed == 0 else 1


def fsck(args: argparse.Namespace) -> int:
    """`fsck [--repair]`: compare journal and storage."""
    return asyncio.run(_fsck(args))


async def _fsck(args: argparse.Namespace) -> int:
    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.files.fsck import check, repair
    from panaversity_fs.files.versions import retention_of

    settings = _settings(args)
    grace = timedelta(seconds=settings.recovery_grace if args.grace is None else args.grace)
    async with open_resources(settings, background=False, recover=False) as resources:
        kept = retention_of(settings)
        report = await check(resources.db, resources.store, args.book, grace, retention=kept)
        if not args.repair:
            print(json.dumps(report.as_dict()))
            return 0 if report.ok else 1
        repaired = await repair(resources.db, resources.store, resources.publisher, report, grace, kept)
        after = await check(resources.db, resources.store, args.book, grace, retention=kept)
    print(json.dumps({"found": report.as_dict(), "repair": repaired.as_dict(), "after": after.as_dict()}))
    return 0 if after.ok else 1


def import_folder(args: argparse.Namespace) -> int:
    """`import BOOK FOLDER`."""
    from pathlib import Path

    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.errors import PanaversityFSError
    from panaversity_fs.identity import check_agent_id
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


def revert(args: argparse.Namespace) -> int:
    """`revert --agent A --since T [--until T] [--book B] [--apply]`: every page, one report."""
    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.errors import PanaversityFSError
    from panaversity_fs.history.results import RevertReport
    from panaversity_fs.identity import Caller, check_agent_id
    from panaversity_fs.operation import Operation

    settings = _settings(args)

    async def run() -> list[RevertReport]:
        pages: list[RevertReport] = []
        async with open_resources(settings, background=False) as resources:
            op = Operation.begin(Caller(check_agent_id(args.operator)), "revert")
            cursor: str | None = None
            while True:
                page = await resources.reverter.revert(
                    op, args.agent, args.since, args.until, args.book, args.apply, cursor
                )
                pages.append(page)
                cursor = page.next_cursor
                if cursor is None:
                    return pages

    try:
        pages = asyncio.run(run())
    except PanaversityFSError as error:
        print(f"panaversity-fs revert: {error.message}", file=sys.stderr)
        return 2
    files = [file for page in pages for file in page.files]
    counts: dict[str, int] = {}
    for file in files:
        counts[file.action] = counts.get(file.action, 0) + 1
    if args.json:
        body = pages[0].model_dump(mode="json", exclude_none=True) | {
            "files": [file.model_dump(mode="json", exclude_none=True) for file in files],
            "counts": counts,
        }
        body.pop("next_cursor", None)
        print(json.dumps(body, indent=1))
    else:
        first = pages[0]
        verb = "reverted" if first.applied else "would revert (dry run; --apply to do it)"
        print(f"{first.agent_id} {first.since} .. {first.until}: {verb}")
        for file in files:
            owner = f" (user {file.user_id})" if file.user_id else ""
            detail = f" -> v{file.to_version}" if file.action == "restore" else ""
            reason = f": {file.reason}" if file.reason else ""
            print(f"  {file.action:<9} {file.book_id}/{file.path}{owner}{detail}{reason}")
        print(
            "  " + ", ".join(f"{count} {action}" for action, count in sorted(counts.items())) or "  nothing"
        )
    return 1 if counts.get("failed") else 0


def hydrate(args: argparse.Namespace) -> int:
    """`hydrate BOOK FOLDER --server URL`."""
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


def token(args: argparse.Namespace) -> int:
    """`token`: print a development bearer token."""
    from panaversity_fs.auth.tokens import mint_token
    from panaversity_fs.errors import PanaversityFSError

    books = [b.strip() for b in args.books.split(",") if b.strip()] if args.books is not None else None
    try:
        print(mint_token(_settings(args), args.sub, args.scope, args.user_id, books, args.ttl))
    except PanaversityFSError as exc:
        print(f"panaversity-fs token: {exc.message}", file=sys.stderr)
        return 2
    return 0
