"""`list_books`: the books the journal knows, with their part / chapter / lesson tree on request.

A caller sees a book while it has a live shared (base) file, or a live file in the caller's own
overlay; another user's overlay never shows, not even as a count or a change time. Counts come
from one grouped query. The structure is built from the base view (overlays are personal and
never listed) and is bounded: without `book_id` it is given only while the listed books hold at most
`STRUCTURE_MAX_FILES` base files together; beyond that, ask for one book at a time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.books.results import BookInfo, BookList, Chapter, ContentTree, Lesson, Part
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import BookSummary, JournalRow
from panaversity_fs.errors import InvalidArgument, unknown_book
from panaversity_fs.operation import Operation
from panaversity_fs.paths import CONTENT_PATH, check_book_id, check_user_id

Structure = Literal["none", "content", "assets", "all"]
STRUCTURES: tuple[Structure, ...] = ("none", "content", "assets", "all")

STRUCTURE_MAX_FILES = 5000
"""Base files the structure of several books may cover in one reply."""


def content_tree(rows: list[JournalRow]) -> ContentTree:
    """The part / chapter / lesson tree of schema-valid lesson rows (summaries mark lessons)."""
    lessons: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    summaries: set[str] = set()
    for row in rows:
        match = CONTENT_PATH.fullmatch(row.path)
        if match is None:
            continue
        if match["summary"]:
            summaries.add(row.path.removesuffix(".summary.md") + ".md")
        else:
            lessons[match["part"]][match["chapter"]][match["lesson"]] = row.path
    return ContentTree(
        parts=[
            Part(
                id=part,
                chapters=[
                    Chapter(
                        id=chapter,
                        lessons=[
                            Lesson(path=path, name=name, has_summary=path in summaries)
                            for name, path in sorted(lessons[part][chapter].items())
                        ],
                    )
                    for chapter in sorted(lessons[part])
                ],
            )
            for part in sorted(lessons)
        ]
    )


def asset_tree(rows: list[JournalRow]) -> dict[str, list[str]]:
    """Asset paths grouped by their type folder (`static/{type}/...`)."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        segments = row.path.split("/")
        if len(segments) >= 3 and segments[0] == "static":
            grouped[segments[1]].append(row.path)
    return {kind: grouped[kind] for kind in sorted(grouped)}


class Catalog:
    """The book listing."""

    def __init__(self, db: Database, trail: AuditTrail) -> None:
        self._db = db
        self._trail = trail

    async def list_books(
        self,
        op: Operation,
        include_structure: object = "none",
        book_id: object = None,
        user_id: object = None,
    ) -> BookList:
        """Return every book the caller sees (or `book_id` only) with counts, and the structure
        when asked. `user_id` (default: the token's user) adds that user's overlay books and counts.

        Raises:
            InvalidArgument: bad `include_structure`, book id or user id, or a structure request
                over several books that together exceed `STRUCTURE_MAX_FILES` files.
            NotFound: `book_id` has no live file the caller sees.
            Unavailable: the database failed; retry.
        """
        what = f"structure:{include_structure}"
        with self._trail.read(op, book_id or "*", what, user_id):
            if include_structure not in STRUCTURES:
                raise InvalidArgument(
                    "include_structure must be one of none, content, assets, all", field="include_structure"
                )
            structure: Structure = include_structure  # type: ignore[assignment]
            book = None if book_id is None else check_book_id(book_id)
            user = check_user_id(user_id) or op.caller.user_id
            return await self._list(structure, book, user)

    async def _list(self, structure: Structure, book: str | None, user: str | None) -> BookList:
        try:
            async with self._db.read() as conn:
                summaries = await journal.book_summaries(conn, book, user)
                if book is not None and not summaries:
                    raise unknown_book(book)
                if structure != "none" and book is None:
                    total = sum(s.base_files for s in summaries)
                    if total > STRUCTURE_MAX_FILES:
                        raise InvalidArgument(
                            f"the structure of all books covers {total} files (limit "
                            f"{STRUCTURE_MAX_FILES}); pass book_id to get one book's structure",
                            field="include_structure",
                        )
                books: list[BookInfo] = []
                for summary in summaries:
                    rows = [] if structure == "none" else await journal.view(conn, summary.book_id, None)
                    books.append(_info(summary, structure, rows))
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        return BookList(books=books, include_structure=structure)


def _info(summary: BookSummary, structure: Structure, rows: list[JournalRow]) -> BookInfo:
    return BookInfo(
        book_id=summary.book_id,
        files=summary.base_files,
        content_files=summary.content_files,
        asset_files=summary.asset_files,
        bytes=summary.base_bytes,
        overlay_files=summary.overlay_files,
        last_modified=summary.last_written_at.isoformat(),
        content=content_tree(rows) if structure in ("content", "all") else None,
        assets=asset_tree(rows) if structure in ("assets", "all") else None,
    )
