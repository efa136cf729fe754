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
wall-clock budget is checked between slices: a search past it ends `truncated` with a cursor
that resumes at the exact byte where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import re2 as _re2_module  # type: ignore[import-untyped]
from wcmatch import glob as wcglob

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit
from panaversity_fs.auth.identity import Caller
from panaversity_fs.books.results import GlobMatch, GlobResult, GrepMatch, GrepResult
from panaversity_fs.config import Settings
from panaversity_fs.content.service import ContentService
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_unavailable
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.fetch import fetch_in_order
from panaversity_fs.paths import check_book_id, check_user_id

GLOB_DEFAULT_LIMIT = 100
GLOB_MAX_LIMIT = 1000
GREP_MAX_RESULTS = 1000
MAX_GLOB_CHARS = 255
MAX_REGEX_CHARS = 500
LINE_CHARS = 500
"""Longest `line` a grep match carries; longer lines are cut around the match."""

RE2_MAX_MEM = 8 << 20
"""Bytes of memory RE2 may use for one compiled pattern (program and DFA caches); a pattern
that needs more is refused when it is compiled."""

STEPS_PER_SLICE = 20_000_000
"""Worst-case RE2 steps (bytes searched x program size) of one slice of text: about 0.15 s on
this project's machine. The time budget is checked between slices."""

INLINE_STEPS = 100_000
"""A slice this cheap runs on the event loop (under a millisecond): handing it to a thread
would cost more than the search."""

MIN_SLICE_BYTES = 4096
"""Smallest slice, whatever the program size, so every slice makes progress."""

WINDOW_OVERLAP = 1024
"""A line longer than a slice is searched in windows overlapping by this many bytes; only a
match longer than this that crosses a window edge could be missed."""

_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.CASE
# google-re2 ships no type information.
_RE2: Any = _re2_module
_RE2_ERROR: type[Exception] = _RE2.error
_GLOB_MAGIC = frozenset("*?[\\")


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
    """Compile a grep pattern with RE2: multi-line (`^`/`$` match at line ends), never matching
    across a newline, its memory bounded by `RE2_MAX_MEM`.

    Raises:
        InvalidArgument: empty, over 500 characters, not RE2 syntax (backreferences,
            lookaround and possessive forms are unsupported), or too large to compile within
            the memory bound, with RE2's reason.
    """
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_REGEX_CHARS or "\x00" in pattern:
        raise InvalidArgument(
            f"pattern must be 1 to {MAX_REGEX_CHARS} characters without NUL", field="pattern"
        )
    options = _RE2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    options.never_nl = True
    options.max_mem = RE2_MAX_MEM
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


@dataclass(frozen=True, slots=True)
class LineMatch:
    """A line holding a match: its number, where it starts, its bytes and the match offset in it."""

    number: int
    start: int
    text: bytes
    offset: int


class FileScan:
    """Where the search of one file's bytes stands: `offset` (next byte to search) and `line`
    (the number of the line holding it). `step` searches one slice and moves on."""

    def __init__(self, regex: Any, data: bytes) -> None:
        self._regex = regex
        self._data = data
        self.offset = 0
        self.line = 1
        self._line_start = 0
        self._slice = max(MIN_SLICE_BYTES, STEPS_PER_SLICE // max(1, int(regex.programsize)))

    def move_to(self, offset: int, line: int) -> None:
        """Resume at byte `offset`, which lies on line number `line`."""
        self.offset, self.line = min(offset, len(self._data)), line
        self._line_start = self._data.rfind(b"\n", 0, self.offset) + 1

    def skip_lines(self, count: int) -> None:
        """Start the search `count` lines further on (past the end: nothing left to search)."""
        for _ in range(count):
            newline = self._data.find(b"\n", self.offset)
            if newline < 0:
                self.offset = self._line_start = len(self._data)
                return
            self.offset = self._line_start = newline + 1
            self.line += 1

    @property
    def done(self) -> bool:
        """Whether the whole file was searched."""
        return self.offset >= len(self._data)

    @property
    def inline(self) -> bool:
        """Whether the rest of the file is cheap enough to search on the event loop."""
        return (len(self._data) - self.offset) * int(self._regex.programsize) <= INLINE_STEPS

    def step(self, max_matches: int) -> list[LineMatch]:
        """Search at most one slice of text (fewer bytes if `max_matches` lines match first);
        return the matching lines and move past them. Thread-safe for one caller at a time."""
        data, regex = self._data, self._regex
        size = len(data)
        budget = self._slice
        found: list[LineMatch] = []
        while self.offset < size and budget > 0 and len(found) < max_matches:
            offset = self.offset
            reach = min(size, offset + budget)
            newline = -1 if reach == size else data.rfind(b"\n", offset, reach)
            end = reach if reach == size or newline < 0 else newline
            # Inside a long line, reach back over the previous window's edge, so a match
            # crossing it is found; any match at all means the line matches.
            begin = max(self._line_start, offset - WINDOW_OVERLAP)
            match = regex.search(data, begin, end)
            if match is not None and match.start() == size and data.endswith(b"\n"):
                match = None  # the "line" after the final newline is not a line
            if match is None:
                budget -= end - offset
                if end == reach and reach < size and newline < 0:  # a window inside a long line
                    self.offset = end
                else:
                    self.line += data.count(b"\n", offset, end + 1)
                    self.offset = self._line_start = end + 1
                continue
            start = match.start()
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", start)
            if line_end < 0:
                line_end = size
            number = self.line + data.count(b"\n", offset, start)
            found.append(LineMatch(number, line_start, data[line_start:line_end], start - line_start))
            budget -= line_end - offset
            self.line = number + 1
            self.offset = self._line_start = line_end + 1
        return found


def display_line(raw: bytes, offset: int) -> str:
    """The line as text, cut to `LINE_CHARS` around the match offset when longer."""
    if len(raw) > LINE_CHARS:
        begin = max(0, min(offset - LINE_CHARS // 4, len(raw) - LINE_CHARS))
        raw = raw[begin : begin + LINE_CHARS]
    return raw.decode("utf-8", errors="ignore").rstrip("\r")


class Searcher:
    """Glob and regex search over journal views."""

    def __init__(
        self, settings: Settings, db: Database, content: ContentService, threads: Executor | None = None
    ) -> None:
        self._settings = settings
        self._db = db
        self._content = content
        self._threads = threads

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
        slices = 0
        try:
            async with self._db.read() as conn:
                books = [book] if book is not None else await journal.book_ids(conn, user)
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
        loop = asyncio.get_running_loop()
        for name in books:
            if position is not None and name < position.book:
                continue
            rows = await self._markdown(name, user, matcher, position)
            async for row, fetched in fetch_in_order(self._content, rows, user):
                if fetched is None:
                    continue
                digest = fetched.row.sha256 or ""
                scan = FileScan(regex, fetched.data)
                if position is not None and (name, row.path) == (position.book, position.path):
                    position.resume(scan, digest)
                while not scan.done:
                    if slices and time.monotonic() > deadline:
                        resume = Position(name, row.path, scan.line, scan.offset, digest[:16])
                        return _grep_page(pattern, matches, searched, query, resume, "time_budget")
                    wanted = limit - len(matches) + 1
                    if scan.inline:
                        found = scan.step(wanted)
                    else:
                        found = await loop.run_in_executor(self._threads, scan.step, wanted)
                    slices += 1
                    for hit in found:
                        if len(matches) == limit:
                            resume = Position(name, row.path, hit.number, hit.start, digest[:16])
                            return _grep_page(pattern, matches, searched, query, resume, "max_results")
                        matches.append(
                            GrepMatch(
                                book_id=name,
                                path=row.path,
                                line_number=hit.number,
                                line=display_line(hit.text, hit.offset),
                                file_hash=digest,
                                source=fetched.row.source,
                            )
                        )
                searched += 1
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
