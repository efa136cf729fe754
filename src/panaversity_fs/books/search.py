"""`glob_search` and `grep_search` over a user's resolved view of one book or of every book.

Both read the journal (never a storage walk), so they see exactly the files the tools serve:
base files, overlaid by `user_id`'s own overlays, and never another user's. Results come in
(book, path, line) order, so a search continued page by page returns what one unbounded search
would.

Regexes run on RE2: no backtracking, memory bounded by `RE2_MAX_MEM`, and `never_nl`, so a
match never spans lines (grep semantics). RE2's worst case is still linear in the text times
the size of the compiled program (`(a|b){1000}c` over 1 MiB is billions of steps), so the
text is searched in slices whose worst-case cost (bytes x program size) is at most
`STEPS_PER_SLICE`, on the search threads (RE2 releases the GIL), never on the event loop. The
wall-clock budget is checked between slices: a search past it ends with a cursor
that resumes at the exact byte where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.books.regex import FileScan, compile_regex, display_line
from panaversity_fs.books.results import GlobMatch, GlobResult, GrepFile, GrepFound, GrepResult
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.fetch import fetch_in_order
from panaversity_fs.files.reader import FileReader
from panaversity_fs.globs import compile_glob, literal_prefix
from panaversity_fs.operation import Operation
from panaversity_fs.paths import check_book_id, check_user_id

GLOB_DEFAULT_LIMIT = 100
GLOB_MAX_LIMIT = 1000
GREP_MAX_RESULTS = 1000


@dataclass(frozen=True, slots=True)
class Position:
    """Where a search resumes: in `book`, at `path`; for grep, at byte `offset` of that file,
    which lies on line `line`, as long as the file still has the hash starting `digest`."""

    book: str
    path: str
    line: int = 1
    offset: int = 0
    digest: str = ""

    def admits(self, book: str, path: str) -> bool:
        """Whether `path` of `book` is at or after this position."""
        return (book, path) >= (self.book, self.path)

    def resume(self, scan: FileScan, digest: str) -> None:
        """Move `scan` of this position's file to where the previous page stopped: the byte
        offset if the file is unchanged, else the start of the same line number."""
        if digest.startswith(self.digest) and self.digest:
            scan.move_to(self.offset, self.line)
            return
        scan.skip_lines(self.line - 1)


class Searcher:
    """Glob and regex search over journal views."""

    def __init__(
        self, settings: Settings, db: Database, reader: FileReader, trail: AuditTrail, threads: Executor
    ) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._trail = trail
        self._threads = threads

    async def glob(
        self,
        op: Operation,
        book_id: object,
        pattern: object,
        user_id: object = None,
        all_books: bool = False,
        cursor: object = None,
        limit: object = None,
    ) -> GlobResult:
        """Return the files of the resolved view whose path matches `pattern`.

        Raises:
            InvalidArgument: bad book id (when not `all_books`), user id, pattern, limit, cursor.
            Unavailable: the database failed; retry.
        """
        with self._trail.read(op, _book_of(book_id, all_books), pattern, user_id):
            user = check_user_id(user_id)
            book = _searched_book(book_id, all_books)
            matcher = compile_glob(pattern)
            assert isinstance(pattern, str)
            bound = check_limit(limit, GLOB_DEFAULT_LIMIT, GLOB_MAX_LIMIT)
            query = cursors.query_digest("glob_search", book, user, pattern)
            position = _position(cursor, query)
            return await self._glob(book, user, pattern, matcher, bound, query, position)

    async def _glob(
        self,
        book: str | None,
        user: str | None,
        pattern: str,
        matcher: Any,
        limit: int,
        query: str,
        position: Position | None,
    ) -> GlobResult:
        deadline = time.monotonic() + self._settings.search_time_budget
        prefix = literal_prefix(pattern)
        matches: list[GlobMatch] = []
        try:
            async with self._db.read() as conn:
                books = [book] if book is not None else await journal.book_ids(conn, user)
                examined = False
                for name in books:
                    if position is not None and name < position.book:
                        continue
                    if examined and time.monotonic() > deadline:
                        # Resume at the start of this book: after the empty path.
                        return _glob_page(matches, query, Position(name, ""))
                    examined = True
                    after = position.path if position is not None and name == position.book else None
                    for row in await journal.view(conn, name, user, prefix, after=after):
                        if not matcher.match(row.path):
                            continue
                        if len(matches) == limit:
                            last = matches[-1]
                            return _glob_page(matches, query, Position(last.book_id, last.path))
                        matches.append(_glob_match(row))
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        return _glob_page(matches, query, None)

    async def grep(
        self,
        op: Operation,
        book_id: object,
        pattern: object,
        user_id: object = None,
        all_books: bool = False,
        path_glob: object = None,
        max_results: object = None,
        case_sensitive: bool = True,
        cursor: object = None,
    ) -> GrepFound:
        """Return the lines of the resolved view's markdown files that match `pattern`, by file.

        Raises:
            InvalidArgument: bad book id (when not `all_books`), user id, pattern, path_glob,
                max_results or cursor.
            Unavailable: the database or storage failed; retry.
            Internal: stored bytes do not match the journal (run fsck).
        """
        with self._trail.read(op, _book_of(book_id, all_books), pattern, user_id):
            user = check_user_id(user_id)
            book = _searched_book(book_id, all_books)
            regex = compile_regex(pattern, bool(case_sensitive))
            assert isinstance(pattern, str)
            matcher = None if path_glob is None else compile_glob(path_glob, "path_glob")
            bound = check_limit(max_results, 100, GREP_MAX_RESULTS, "max_results")
            query = cursors.query_digest("grep_search", book, user, pattern, path_glob, bool(case_sensitive))
            position = _position(cursor, query)
            return await self._grep(book, user, regex, matcher, bound, query, position)

    async def _grep(
        self,
        book: str | None,
        user: str | None,
        regex: Any,
        matcher: Any,
        limit: int,
        query: str,
        position: Position | None,
    ) -> GrepFound:
        deadline = time.monotonic() + self._settings.search_time_budget
        found = _Found(limit, query)
        slices = 0
        try:
            async with self._db.read() as conn:
                books = [book] if book is not None else await journal.book_ids(conn, user)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        loop = asyncio.get_running_loop()
        for name in books:
            if position is not None and name < position.book:
                continue
            rows = await self._markdown(name, user, matcher, position)
            async for row, fetched in fetch_in_order(self._reader, rows, user):
                if fetched is None:
                    continue
                digest = fetched.row.sha256 or ""
                scan = FileScan(regex, fetched.data)
                if position is not None and (name, row.path) == (position.book, position.path):
                    position.resume(scan, digest)
                while not scan.done:
                    if slices and time.monotonic() > deadline:
                        resume = Position(name, row.path, scan.line, scan.offset, digest[:16])
                        return found.page(resume, "time_budget")
                    wanted = limit - found.count + 1
                    if scan.inline:
                        hits = scan.step(wanted)
                    else:
                        hits = await loop.run_in_executor(self._threads, scan.step, wanted)
                    slices += 1
                    for hit in hits:
                        if found.count == limit:
                            resume = Position(name, row.path, hit.number, hit.start, digest[:16])
                            return found.page(resume, "max_results")
                        found.add(fetched.row, hit.number, display_line(hit.text, hit.offset))
                found.searched += 1
        return found.page(None, None)

    async def _markdown(
        self, book: str, user: str | None, matcher: Any, position: Position | None
    ) -> list[JournalRow]:
        try:
            async with self._db.read() as conn:
                rows = await journal.view(conn, book, user, "content/")
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        return [
            row
            for row in rows
            if row.path.endswith(".md")
            and (matcher is None or matcher.match(row.path))
            and (position is None or position.admits(book, row.path))
        ]


def _position(cursor: object, query: str) -> Position | None:
    if cursor is None:
        return None
    decoded = cursors.decode(cursor, query)
    return Position(
        cursors.text_field(decoded, "b"),
        cursors.text_field(decoded, "p"),
        cursors.int_field(decoded, "l") if "l" in decoded else 1,
        cursors.int_field(decoded, "o") if "o" in decoded else 0,
        cursors.text_field(decoded, "h") if "h" in decoded else "",
    )


def _encode(query: str, position: Position) -> str:
    fields: dict[str, object] = {"b": position.book, "p": position.path}
    if position.offset or position.line > 1:
        fields.update(l=position.line, o=position.offset, h=position.digest)
    return cursors.encode(query, fields)


def _glob_match(row: JournalRow) -> GlobMatch:
    source = row.source
    return GlobMatch(
        book_id=row.book_id,
        path=row.path,
        file_hash=row.sha256 or "",
        size=row.size,
        source=source,  # type: ignore[arg-type]
    )


def _glob_page(matches: list[GlobMatch], query: str, last: Position | None) -> GlobResult:
    # A glob cursor resumes strictly after the last returned path.
    return GlobResult(matches=matches, next_cursor=None if last is None else _encode(query, last))


class _Found:
    """The matches of one grep page, grouped by file in the order found."""

    def __init__(self, limit: int, query: str) -> None:
        self.limit = limit
        self.query = query
        self.count = 0
        self.searched = 0
        self.files: list[GrepFile] = []
        self.texts: list[list[str]] = []

    def add(self, row: JournalRow, line: int, text: str) -> None:
        last = self.files[-1] if self.files else None
        if last is None or (last.book_id, last.path) != (row.book_id, row.path):
            last = GrepFile(
                book_id=row.book_id, path=row.path, file_hash=row.sha256 or "", source=row.source, lines=[]
            )
            self.files.append(last)
            self.texts.append([])
        last.lines.append(line)
        self.texts[-1].append(text)
        self.count += 1

    def page(self, resume: Position | None, reason: Any) -> GrepFound:
        result = GrepResult(
            files=self.files,
            matches=self.count,
            files_searched=self.searched,
            next_cursor=None if resume is None else _encode(self.query, resume),
            reason=reason,
        )
        return GrepFound(result, self.texts)


def _searched_book(book_id: object, all_books: bool) -> str | None:
    if all_books:
        return None
    if book_id is None:
        raise InvalidArgument("book_id is required: pass book_id, or all_books: true", field="book_id")
    return check_book_id(book_id)


def _book_of(book_id: object, all_books: bool) -> object:
    return "*" if all_books else book_id
