"""`AssetService`: describe, list and delete the assets of a book (uploads: `assets.uploads`)."""

from __future__ import annotations

import logging

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit
from panaversity_fs.assets.common import AssetLinks, check_asset_type
from panaversity_fs.assets.results import AssetEntry, AssetInfo, AssetListing, AssetRead
from panaversity_fs.audit.trail import AuditTrail, Subject
from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument, NotFound, Unavailable
from panaversity_fs.files.engine import FileEngine
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.mime import OCTET_STREAM
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.results import DeleteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, check_book_id, check_hash
from panaversity_fs.times import from_unix

logger = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AssetService:
    """`get_asset`, `list_assets`, `delete_asset`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        reader: FileReader,
        files: FileEngine,
        trail: AuditTrail,
        links: AssetLinks,
    ) -> None:
        self._inline_limit = settings.max_inline_asset_bytes
        self._db = db
        self._reader = reader
        self._files = files
        self._trail = trail
        self._links = links

    async def get(self, op: Operation, book_id: object, path: object, include_binary: bool) -> AssetRead:
        """Describe an asset; with `include_binary`, add its bytes if they fit inline.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            NotFound: no such asset (or it was deleted).
            Unavailable: the database or storage failed, or the asset changed meanwhile; retry.
        """
        with self._trail.read(op, book_id, path) as note:
            target = Target.asset(book_id, path)
            note.what = target.path
            try:
                async with self._db.read() as conn:
                    rows = await journal.fetch(conn, target.book_id, target.path, [BASE_USER])
                    row = rows.get(BASE_USER)
                    writer = None
                    if row is not None and row.sha256 is not None:
                        writer = await audit_sql.last_writer(
                            conn, target.book_id, target.path, BASE_USER, row.sha256
                        )
            except DB_ERRORS as exc:
                raise database_failure(exc) from None
            if row is None or row.sha256 is None:
                raise NotFound(
                    f"{target.path} does not exist: list_assets shows the assets", path=target.path
                )
            return await self._info(row, writer, include_binary)

    async def _info(self, row: JournalRow, writer: str | None, include_binary: bool) -> AssetRead:
        assert row.sha256 is not None
        url, expires = self._links.download_url(row.book_id, row.path, row.sha256)
        data: bytes | None = None
        note: str | None = None
        if include_binary:
            if row.size > self._inline_limit:
                note = f"the asset is {row.size} bytes, over the inline limit of {self._inline_limit}: use download_url"
            else:
                data = await self._reader.verified_bytes(row)
                if data is None:
                    raise Unavailable("the asset changed during the read; retry", path=row.path)
        info = AssetInfo(
            book_id=row.book_id,
            path=row.path,
            file_hash=row.sha256,
            size=row.size,
            content_type=row.content_type or OCTET_STREAM,
            last_modified=row.last_written_at.isoformat(),
            version=row.version,
            uploaded_by=writer,
            download_url=url,
            expires_at=from_unix(expires),
            binary_note=note,
        )
        return AssetRead(info, data)

    async def list(
        self, op: Operation, book_id: object, asset_type: object, cursor: object, limit: object
    ) -> AssetListing:
        """One page of a book's assets (all, or of one type), in path order.

        Raises:
            InvalidArgument, SchemaViolation: bad arguments (an unknown type, a foreign cursor).
            Unavailable: the database failed; retry.
        """
        with self._trail.read(op, book_id, "static/") as note:
            book = check_book_id(book_id)
            kind = None if asset_type is None else check_asset_type(asset_type)
            prefix = note.what = f"static/{kind}/" if kind else "static/"
            query = cursors.query_digest("list_assets", book, prefix)
            after = _after(cursor, query, prefix)
            page = check_limit(limit, DEFAULT_PAGE, MAX_PAGE)
            try:
                async with self._db.read() as conn:
                    rows = await journal.view(conn, book, None, prefix=prefix, after=after, limit=page + 1)
            except DB_ERRORS as exc:
                raise database_failure(exc) from None
        more = len(rows) > page
        rows = rows[:page]
        return AssetListing(
            book_id=book,
            asset_type=kind,
            items=[
                AssetEntry(
                    path=row.path,
                    file_hash=row.sha256 or "",
                    size=row.size,
                    content_type=row.content_type or OCTET_STREAM,
                    last_modified=row.last_written_at.isoformat(),
                )
                for row in rows
            ],
            next_cursor=cursors.encode(query, {"p": rows[-1].path}) if more else None,
        )

    async def delete(
        self, op: Operation, book_id: object, path: object, expected_hash: object
    ) -> DeleteOutcome:
        """Delete an asset (idempotent: a missing asset gives `existed: false`).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (a reused key).
            Conflict: `expected_hash` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        async with self._trail.mutation(op, Subject(book_id, path)):
            target = Target.asset(book_id, path)
            expected = check_hash(expected_hash)
            idem = Idempotency.for_call(op, target.arguments(expected))
        return await self._files.delete(op, target, expected, idem)


def _after(cursor: object, query: str, prefix: str) -> str | None:
    """The last path of the previous page, from a cursor issued for `query`."""
    if cursor is None:
        return None
    after = cursors.text_field(cursors.decode(cursor, query), "p")
    if not after.startswith(prefix):
        raise InvalidArgument("cursor is not a cursor this server issued", field="cursor")
    return after
