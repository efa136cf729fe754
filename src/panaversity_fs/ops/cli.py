"""`panaversity-fs`: serve, migrate, verify the audit chain, recover leftovers, import, hydrate,
mint development tokens."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pydantic import ValidationError

from panaversity_fs.errors import ConfigurationError
from panaversity_fs.ops import commands as run_command


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `panaversity-fs`."""
    parser = argparse.ArgumentParser(prog="panaversity-fs", description=__doc__)
    parser.add_argument("--database-url", dest="database_url", help="overrides DATABASE_URL")
    parser.add_argument("--storage-backend", dest="storage_backend", choices=["fs", "s3"])
    parser.add_argument("--storage-root", dest="storage_root", help="fs backend root folder")
    parser.add_argument("--log-level", dest="log_level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server over streamable HTTP")
    serve.set_defaults(handler=run_command.serve)
    serve.add_argument("--host", dest="server_host")
    serve.add_argument("--port", dest="server_port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")

    db = commands.add_parser("db", help="database schema")
    db.set_defaults(handler=run_command.db)
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade the schema (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_commands.add_parser("current", help="print the current and head revisions")
    db_commands.add_parser("check", help="exit 1 unless the schema is at head")

    audit = commands.add_parser("audit", help="audit trail")
    audit.set_defaults(handler=run_command.audit)
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
    fsck.set_defaults(handler=run_command.fsck)
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
    importer.set_defaults(handler=run_command.import_folder)
    importer.add_argument("book_id")
    importer.add_argument("folder")
    importer.add_argument("--agent", default="panaversity-fs-import", help="agent id for the audit")
    importer.add_argument("--dry-run", action="store_true", help="report what would change")
    importer.add_argument("--json", action="store_true", help="print the summary as JSON")

    hydrate = commands.add_parser("hydrate", help="update a local book folder from a running server")
    hydrate.set_defaults(handler=run_command.hydrate)
    hydrate.add_argument("book_id")
    hydrate.add_argument("folder")
    hydrate.add_argument("--server", required=True, help="server base URL, e.g. http://host:8000")
    hydrate.add_argument("--token", default=os.environ.get("PANAVERSITY_TOKEN"), help="bearer token")
    hydrate.add_argument("--json", action="store_true", help="print the summary as JSON")

    token = commands.add_parser(
        "token", help="print a development bearer token signed with PANAVERSITY_JWT_SECRET"
    )
    token.set_defaults(handler=run_command.token)
    token.add_argument("--sub", required=True, help="agent id (the token's sub)")
    token.add_argument("--scope", default="fs:read fs:write", help='e.g. "fs:read" or "fs:admin"')
    token.add_argument("--user-id", dest="user_id", help="bind the token to this user's overlay")
    token.add_argument("--books", help="comma-separated book ids the token may use")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")

    revert = commands.add_parser(
        "revert", help="put back every file an agent changed in a time window (dry run unless --apply)"
    )
    revert.set_defaults(handler=run_command.revert)
    revert.add_argument("--agent", required=True, help="the agent whose changes to revert")
    revert.add_argument("--since", required=True, help="window start, ISO-8601 with timezone")
    revert.add_argument("--until", help="window end (default: now)")
    revert.add_argument("--book", help="only this book")
    revert.add_argument("--apply", action="store_true", help="make the changes (default: report them)")
    revert.add_argument(
        "--as", dest="operator", default="panaversity-fs-revert", help="agent id for the audit"
    )
    revert.add_argument("--json", action="store_true", help="print the report as JSON")

    recover = commands.add_parser("recover", help="finish pending publishes, remove orphans")
    recover.set_defaults(handler=run_command.recover)
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
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
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
