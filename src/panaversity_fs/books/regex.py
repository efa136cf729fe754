"""The grep engine: RE2 patterns searched a bounded slice at a time.

RE2 never backtracks, its memory is bounded by `RE2_MAX_MEM`, and with `never_nl` a match never
spans lines (grep semantics). Its worst case is still linear in the text times the size of the
compiled program (`(a|b){1000}c` over 1 MiB is billions of steps), so `FileScan` searches a
file in slices whose worst-case cost (bytes x program size) is at most `STEPS_PER_SLICE`. The
caller runs each slice on a search thread (RE2 releases the GIL) and checks its time budget
between slices; `FileScan.offset` and `.line` say where to resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2 as _re2_module  # type: ignore[import-untyped]

from panaversity_fs.errors import InvalidArgument

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

# google-re2 ships no type information.
_RE2: Any = _re2_module
_RE2_ERROR: type[Exception] = _RE2.error


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
