"""Bulk reads: a chapter, a part or a whole book, page by page.

One page = one journal query (`journal.view`, overlay-resolved, byte-wise path order) plus
parallel, hash-verified storage reads. A page holds at most `limit` files and, beyond its first
file, at most `settings.page_bytes` bytes of answer: the texts as JSON will carry them (escapes
included) plus each file's description, so one huge file still makes progress alone and no page
of many files outgrows what clients read in one message.
"""

from __future__ import annotations

import re

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.books.results import BulkPage, BulkScope, PageFile, PageRead
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument, SchemaViolation
from panaversity_fs.files.fetch import fetch_in_order
from panaversity_fs.files.reader import FileReader
from panaversity_fs.operation import Operation
from panaversity_fs.paths import canonicalize, check_book_id, check_user_id
from panaversity_fs.times import iso

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

_FOLDER = re.compile(r"[0-9]{2}-[A-Za-z0-9][A-Za-z0-9-]*")
_EXAMPLES = {"chapter": "content/01-Introduction/02-Variables", "part": "content/01-Introduction"}


def scope_prefix(scope: object, path: object) -> tuple[BulkScope, str]:
    """Validate a bulk scope and its folder; return the scope and the folder's path prefix.

    `chapter` needs `content/{NN-Part}/{NN-Chapter}`, `part` needs `content/{NN-Part}`;
    `book` ignores `path`. The prefix ends with `/`.

    Raises:
        InvalidArgument: unknown scope.
        InvalidPath: the folder path is unsafe.
        SchemaViolation: the folder is not a part or chapter folder.
    """
    if scope == "book":
        return "book", "content/"
    if scope not in ("chapter", "part"):
        raise InvalidArgument("scope must be one of file, chapter, part, book", field="scope")
    depth = 3 if scope == "chapter" else 2
    if path is None:
        raise InvalidArgument(f"scope {scope} needs the {scope} folder as path", example=_EXAMPLES[scope])
    folder = canonicalize(path)
    segments = folder.split("/")
    if (
        len(segments) != depth
        or segments[0] != "content"
        or not all(_FOLDER.fullmatch(s) for s in segments[1:])
    ):
        shape = "content/{NN-Part}/{NN-Chapter}" if scope == "chapter" else "content/{NN-Part}"
        raise SchemaViolation(
            f"a {scope} is named by its folder, {shape} (NN two digits, then a name)",
            rule=shape,
            example=_EXAMPLES[scope],
        )
    return scope, folder + "/"  # type: ignore[return-value]


class BulkReader:
    """`read_content` for the chapter, part and book scopes."""

    def __init__(self, settings: Settings, db: Database, reader: FileReader, trail: AuditTrail) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._trail = trail

    async def read_page(
        self,
        op: Operation,
        book_id: object,
        scope: object,
        path: object,
        user_id: object = None,
        cursor: object = None,
        limit: object = None,
    ) -> PageRead:
        """Return one page of the files under a chapter, part or book, as `user_id` sees them.

        Only markdown under `content/` is returned; overlays of `user_id` replace base files
        and no other user's overlay is read. Every file is verified against its hash.

        Raises:
            InvalidArgument: bad book id, user id, scope, limit, or a cursor issued for
                another query.
            InvalidPath, SchemaViolation: bad folder path.
            Unavailable: the database or storage failed, or a file kept changing; retry.
            Internal: stored bytes do not match the journal (run fsck).
        """
        with self._trail.read(op, book_id, f"{scope}:{path}", user_id) as note:
            book = check_book_id(book_id)
            user = check_user_id(user_id)
            kind, prefix = scope_prefix(scope, path)
            note.what = f"{kind}:{prefix}"
            page_limit = check_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)
            query = cursors.query_digest("read_content", book, user, kind, prefix)
            after = None if cursor is None else cursors.text_field(cursors.decode(cursor, query), "p")
            return await self._page(book, user, kind, prefix, query, after, page_limit)

    async def _page(
        self,
        book: str,
        user: str | None,
        scope: BulkScope,
        prefix: str,
        query: str,
        after: str | None,
        limit: int,
    ) -> PageRead:
        try:
            async with self._db.read() as conn:
                rows = await journal.view(conn, book, user, prefix, after=after, limit=limit + 1)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        more = len(rows) > limit
        chosen = self._within_budget(rows[:limit])
        more = more or len(chosen) < min(len(rows), limit)
        files: list[PageFile] = []
        texts: list[str] = []
        sent = 0
        last = chosen[-1].path if chosen else None
        async for row, fetched in fetch_in_order(self._reader, chosen, user):
            if fetched is None or not row.path.endswith(".md"):
                continue  # deleted since the listing (the page shows the later state), or an asset
            text = fetched.data.decode("utf-8", errors="surrogateescape")
            cost = cursors.wire_bytes(text) + cursors.FILE_OVERHEAD
            if files and sent + cost > self._settings.page_bytes:
                more, last = True, files[-1].path
                break
            sent += cost
            files.append(
                PageFile(
                    path=fetched.row.path,
                    file_hash=fetched.row.sha256 or "",
                    size=len(fetched.data),
                    version=fetched.row.version,
                    last_modified=iso(fetched.row.last_written_at),
                    source=fetched.source,
                )
            )
            texts.append(text)
        next_cursor = cursors.encode(query, {"p": last}) if more and last is not None else None
        page = BulkPage(
            book_id=book,
            scope=scope,
            path=prefix.rstrip("/") if scope != "book" else "content",
            user_id=user,
            files=files,
            next_cursor=next_cursor,
        )
        return PageRead(page, texts)

    def _within_budget(self, rows: list[JournalRow]) -> list[JournalRow]:
        budget = self._settings.page_bytes
        chosen: list[JournalRow] = []
        total = 0
        for row in rows:
            if chosen and total + row.size > budget:
                break
            chosen.append(row)
            total += row.size
        return chosen
