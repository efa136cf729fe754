"""`AssetService`: describe, list and delete the assets of a book (uploads: `assets.uploads`)."""

from __future__ import annotations

import base64
import logging
import time

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit
from panaversity_fs.assets.common import AssetBase, check_asset_type, iso_time
from panaversity_fs.assets.results import AssetEntry, AssetInfo, AssetListing
from panaversity_fs.auth.identity import Caller
from panaversity_fs.content.service import Target
from panaversity_fs.db import audit_sql as audit_repository
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, database_unavailable
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument, NotFound, PanaversityFSError, Unavailable
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.mime import OCTET_STREAM
from panaversity_fs.files.results import DeleteOutcome
from panaversity_fs.paths import BASE_USER, check_book_id, check_hash

logger = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AssetService(AssetBase):
    """`get_asset`, `list_assets`, `delete_asset`."""

    async def get(self, caller: Caller, book_id: object, path: object, include_binary: bool) -> AssetInfo:
        """Describe an asset; with `include_binary`, add its bytes if they fit inline.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            NotFound: no such asset (or it was deleted).
            Unavailable: the database or storage failed, or the asset changed meanwhile; retry.
        """
        with self._content.audited_read(caller, "get_asset", book_id, path) as note:
            target = Target.asset(book_id, path)
            note.what = target.path
            try:
                async with self._r.db.read() as conn:
                    rows = await journal.fetch(conn, target.book_id, target.path, [BASE_USER])
                    row = rows.get(BASE_USER)
                    writer = None
                    if row is not None and row.sha256 is not None:
                        writer = await audit_repository.last_writer(
                            conn, target.book_id, target.path, BASE_USER, row.sha256
                        )
            except DB_ERRORS as exc:
                raise database_unavailable(exc) from None
            if row is None or row.sha256 is None:
                raise NotFound(f"{target.path} does not exist", path=target.path)
            return await self._info(row, writer, include_binary)

    async def _info(self, row: JournalRow, writer: str | None, include_binary: bool) -> AssetInfo:
        assert row.sha256 is not None
        url, expires = self._download_url(row.book_id, row.path, row.sha256)
        binary: str | None = None
        note: str | None = None
        if include_binary:
            limit = self._settings.max_inline_asset_bytes
            if row.size > limit:
                note = f"the asset is {row.size} bytes, over the inline limit of {limit}: use download_url"
            else:
                data = await self._content.fetch_bytes(row)
                if data is None:
                    raise Unavailable("the asset changed during the read; retry", path=row.path)
                binary = base64.b64encode(data).decode("ascii")
        return AssetInfo(
            book_id=row.book_id,
            path=row.path,
            file_hash=row.sha256,
            size=row.size,
            content_type=row.content_type or OCTET_STREAM,
            last_modified=row.last_written_at.isoformat(),
            version=row.version,
            uploaded_by=writer,
            download_url=url,
            expires_at=iso_time(expires),
            binary_data=binary,
            binary_note=note,
        )

    async def list(
        self, caller: Caller, book_id: object, asset_type: object, cursor: object, limit: object
    ) -> AssetListing:
        """One page of a book's assets (all, or of one type), in path order.

        Raises:
            InvalidArgument, SchemaViolation: bad arguments (an unknown type, a foreign cursor).
            Unavailable: the database failed; retry.
        """
        with self._content.audited_read(caller, "list_assets", book_id, "static/") as note:
            book = check_book_id(book_id)
            kind = None if asset_type is None else check_asset_type(asset_type)
            prefix = note.what = f"static/{kind}/" if kind else "static/"
            query = cursors.query_digest("list_assets", book, prefix)
            after = _after(cursor, query, prefix)
            page = check_limit(limit, DEFAULT_PAGE, MAX_PAGE)
            try:
                async with self._r.db.read() as conn:
                    rows = await journal.view(conn, book, None, prefix=prefix, after=after, limit=page + 1)
            except DB_ERRORS as exc:
                raise database_unavailable(exc) from None
        truncated = len(rows) > page
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
            truncated=truncated,
            next_cursor=cursors.encode(query, {"p": rows[-1].path}) if truncated else None,
        )

    async def delete(
        self,
        caller: Caller,
        book_id: object,
        path: object,
        expected_hash: object,
        idempotency_key: object = None,
    ) -> DeleteOutcome:
        """Delete an asset (idempotent: a missing asset gives `existed: false`).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (a reused key).
            Conflict: `expected_hash` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        started = time.perf_counter()
        try:
            target = Target.asset(book_id, path)
            expected = check_hash(expected_hash)
            idem = Idempotency.for_call(caller, "delete_asset", idempotency_key, target.arguments(expected))
        except PanaversityFSError as error:
            await self._content.audit_refusal(caller, "delete_asset", book_id, path, None, started, error)
            raise
        return await self._content.deleter.delete_file(
            caller, "delete_asset", target, expected, started, idem
        )


def _after(cursor: object, query: str, prefix: str) -> str | None:
    """The last path of the previous page, from a cursor issued for `query`."""
    if cursor is None:
        return None
    after = cursors.text_field(cursors.decode(cursor, query), "p")
    if not after.startswith(prefix):
        raise InvalidArgument("cursor is not a cursor this server issued", field="cursor")
    return after
