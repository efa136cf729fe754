"""Book-path globs: `**` spans folders, `*` and `?` stay in one segment, `[...]` classes."""

from __future__ import annotations

from typing import Any

from wcmatch import glob as wcglob

from panaversity_fs.errors import InvalidArgument

MAX_GLOB_CHARS = 255

_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.CASE
_GLOB_MAGIC = frozenset("*?[\\")


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
