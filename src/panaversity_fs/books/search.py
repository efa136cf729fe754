"""`glob_search` and `grep_search` over a user's resolved view of one book or of every book.

Both read the journal (never a storage walk), so they see exactly the files the tools serve:
base files, overlaid by `user_id`'s own overlays, and never another user's. Regexes run on
RE2 (linear time, no backtracking); a wall-clock budget bounds a search, which then ends
`truncated` with a cursor that continues it. Results come in (book, path, line) order, so a
search continued page by page returns what one unbounded search would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import re2 as _re2_module  # type: ignore[import-untyped]
from wcmatch import glob as wcglob

from panaversity_fs.arguments import check_limit
from panaversity_fs.auth.identity import Caller
from panaversity_fs.books import cursor as cursors
from panaversity_fs.books.fetch import fetch_in_order
from panaversity_fs.books.results import GlobMatch, GlobResult, GrepMatch, GrepResult
from panaversity_fs.config import Settings
from panaversity_fs.content.service import ContentService
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.engine import DB_ERRORS, Database, database_unavailable
from panaversity_fs.journal.repository import JournalRow
from panaversity_fs.paths import check_book_id, check_user_id

GLOB_DEFAULT_LIMIT = 100
GLOB_MAX_LIMIT = 1000
GREP_MAX_RESULTS = 1000
MAX_GLOB_CHARS = 255
MAX_REGEX_CHARS = 500
LINE_CHARS = 500
"""Longest `line` a grep match carries; longer lines are cut around the match."""

_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.CASE
# google-re2 ships no type information.
_RE2: Any = _re2_module
_RE2_ERROR: type[Exception] = _RE2.error
_GLOB_MAGIC = frozenset("*?[\\")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a search resumes: in `book`, at `path`, after `line` (0: the whole file)."""

    book: str
    path: str
    line: int = 0

    def admits(self, book: str, path: str) -> bool:
        """Whether `path` of `book` is at or after this position."""
        return (book, path) >= (self.book, self.path)


def compile_glob(pattern: object, field: str = "pattern") -> Any:
    """Compile a book-path glob: `**` crosses folders, `*` and `?` do not, `[...]` classes.

    Raises:
        InvalidArgument: empty, over 255 characters, holding NUL, or malformed.
    """
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_GLOB_CHARS or "\x00" in pattern:
        raise InvalidArgument(f"{field} must be 1 to {MAX_GLOB_CHARS} characters without NUL", field=field)
    try:
        return wcglob.compile(pattern, flags=_GLOB_FLAGS)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{field} is not a valid glob: {exc}", field=field) from None


def literal_prefix(pattern: str) -> str:
    """The leading folders of `pattern` that hold no glob syntax (a prefix every match shares)."""
    segments = pattern.split("/")
    literal: list[str] = []
    for segment in segments[:-1]:
        if any(c in _GLOB_MAGIC for c in segment) or segment in ("", ".", ".."):
            break
        literal.append(segment)
    return "".join(f"{s}/" for s in literal)


def compile_regex(pattern: object, case_sensitive: bool) -> Any:
    """Compile a grep pattern with RE2, multi-line (`^`/`$` match at line ends).

    Raises:
        InvalidArgument: empty, over 500 characters, or not RE2 syntax (backreferences,
            lookaround and possessive forms are unsupported), with RE2's reason.
    """
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_REGEX_CHARS or "\x00" in pattern:
        raise InvalidArgument(
            f"pattern must be 1 to {MAX_REGEX_CHARS} characters without NUL", field="pattern"
        )
    options = _RE2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    try:
        return _RE2.compile(b"(?m)" + pattern.encode("utf-8", errors="surrogatepass"), options)
    except _RE2_ERROR as exc:
        first: object = exc.args[0] if exc.args else exc
        reason = first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
        raise InvalidArgument(
            f"pattern is not a supported regular expression ({reason}); RE2 syntax: no "
            "backreferences or lookaround",
            field="pattern",
            reason=reason,
        ) from None


def matching_lines(regex: Any, data: bytes, after_line: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """Yield `(line number, line bytes, match offset in the line)` once per matching line.

    The regex runs over the whole text; line numbers come from the match offsets. Lines up to
    `after_line` are skipped.
    """
    pos = 0
    line = 1
    while line <= after_line:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return
        pos = newline + 1
        line += 1
    counted_to = pos
    size = len(data)
    while pos < size:
        match = regex.search(data, pos)
        if match is None:
            return
        start = match.start()
        line += data.count(b"\n", counted_to, start)
        counted_to = start
        line_start = data.rfind(b"\n", 0, start) + 1
        line_end = data.find(b"\n", start)
        if line_end < 0:
            line_end = size
        yield line, data[line_start:line_end], start - line_start
        pos = line_end + 1


def display_line(raw: bytes, offset: int) -> str:
    """The line as text, cut to `LINE_CHARS` around the match offset when longer."""
    if len(raw) > LINE_CHARS:
        begin = max(0, min(offset - LINE_CHARS // 4, len(raw) - LINE_CHARS))
        raw = raw[begin : begin + LINE_CHARS]
    return raw.decode("utf-8", errors="ignore").rstrip("\r")


class Searcher:
    """Glob and regex search over journal views."""

    def __init__(self, settings: Settings, db: Database, content: ContentService) -> None:
        self._settings = settings
        self._db = db
        self._content = content

    async def glob(
        self,
        caller: Caller,
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
        with self._content.audited_read(
            caller, "glob_search", _book_of(book_id, all_books), pattern, user_id
        ):
            user = check_user_id(user_id)
            book = None if all_books else check_book_id(book_id)
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
                        return _glob_page(pattern, matches, query, Position(name, ""))
                    examined = True
                    after = position.path if position is not None and name == position.book else None
                    for row in await journal.view(conn, name, user, prefix, after=after):
                        if not matcher.match(row.path):
                            continue
                        if len(matches) == limit:
                            last = matches[-1]
                            return _glob_page(pattern, matches, query, Position(last.book_id, last.path))
                        matches.append(_glob_match(row))
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
        return _glob_page(pattern, matches, query, None)

    async def grep(
        self,
        caller: Caller,
        book_id: object,
        pattern: object,
        user_id: object = None,
        all_books: bool = False,
        path_glob: object = None,
        max_results: object = None,
        case_sensitive: bool = True,
        cursor: object = None,
    ) -> GrepResult:
        """Return the lines of the resolved view's markdown files that match `pattern`.

        Raises:
            InvalidArgument: bad book id (when not `all_books`), user id, pattern, path_glob,
                max_results or cursor.
            Unavailable: the database or storage failed; retry.
            Internal: stored bytes do not match the journal (run fsck).
        """
        with self._content.audited_read(
            caller, "grep_search", _book_of(book_id, all_books), pattern, user_id
        ):
            user = check_user_id(user_id)
            book = None if all_books else check_book_id(book_id)
            regex = compile_regex(pattern, bool(case_sensitive))
            assert isinstance(pattern, str)
            matcher = None if path_glob is None else compile_glob(path_glob, "path_glob")
            bound = check_limit(max_results, 100, GREP_MAX_RESULTS)
            query = cursors.query_digest("grep_search", book, user, pattern, path_glob, bool(case_sensitive))
            position = _position(cursor, query)
            return await self._grep(book, user, pattern, regex, matcher, bound, query, position)

    async def _grep(
        self,
        book: str | None,
        user: str | None,
        pattern: str,
        regex: Any,
        matcher: Any,
        limit: int,
        query: str,
        position: Position | None,
    ) -> GrepResult:
        deadline = time.monotonic() + self._settings.search_time_budget
        matches: list[GrepMatch] = []
        searched = 0
        try:
            async with self._db.read() as conn:
                books = [book] if book is not None else await journal.book_ids(conn, user)
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
        for name in books:
            if position is not None and name < position.book:
                continue
            rows = await self._markdown(name, user, matcher, position)
            async for row, fetched in fetch_in_order(self._content, rows, user):
                if searched and time.monotonic() > deadline:
                    resume = Position(name, row.path)
                    return _grep_page(pattern, matches, searched, query, resume, "time_budget")
                if fetched is None:
                    continue
                searched += 1
                skip = (
                    position.line
                    if position is not None and (name, row.path) == (position.book, position.path)
                    else 0
                )
                source = fetched.row.source
                for line_number, raw, offset in matching_lines(regex, fetched.data, skip):
                    if len(matches) == limit:
                        last = matches[-1]
                        resume = Position(last.book_id, last.path, last.line_number)
                        return _grep_page(pattern, matches, searched, query, resume, "max_results")
                    matches.append(
                        GrepMatch(
                            book_id=name,
                            path=row.path,
                            line_number=line_number,
                            line=display_line(raw, offset),
                            file_hash=fetched.row.sha256 or "",
                            source=source,  # type: ignore[arg-type]
                        )
                    )
        return _grep_page(pattern, matches, searched, query, None, None)

    async def _markdown(
        self, book: str, user: str | None, matcher: Any, position: Position | None
    ) -> list[JournalRow]:
        try:
            async with self._db.read() as conn:
                rows = await journal.view(conn, book, user, "content/")
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
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
        cursors.int_field(decoded, "l") if "l" in decoded else 0,
    )


def _encode(query: str, position: Position) -> str:
    return cursors.encode(query, {"b": position.book, "p": position.path, "l": position.line})


def _glob_match(row: JournalRow) -> GlobMatch:
    source = row.source
    return GlobMatch(
        book_id=row.book_id,
        path=row.path,
        file_hash=row.sha256 or "",
        size=row.size,
        source=source,  # type: ignore[arg-type]
    )


def _glob_page(pattern: str, matches: list[GlobMatch], query: str, last: Position | None) -> GlobResult:
    # A glob cursor resumes strictly after the last returned path.
    return GlobResult(
        pattern=pattern,
        matches=matches,
        truncated=last is not None,
        next_cursor=None if last is None else _encode(query, last),
    )


def _grep_page(
    pattern: str,
    matches: list[GrepMatch],
    searched: int,
    query: str,
    resume: Position | None,
    reason: Any,
) -> GrepResult:
    return GrepResult(
        pattern=pattern,
        matches=matches,
        files_searched=searched,
        truncated=resume is not None,
        next_cursor=None if resume is None else _encode(query, resume),
        reason=reason,
    )


def _book_of(book_id: object, all_books: bool) -> object:
    return "*" if all_books else book_id
