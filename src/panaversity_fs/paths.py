"""Path rules: the one place that decides what a book path, a book id and a user id may be.

Pure functions, no I/O. Every tool canonicalises its path here before anything touches the
database, storage, or a retrying layer (specs/contract.md, "Paths").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from panaversity_fs.errors import InvalidArgument, InvalidPath, SchemaViolation

MAX_PATH_BYTES = 512
"""Longest accepted path, in UTF-8 bytes (after NFC normalisation)."""

MAX_SEGMENT_BYTES = 128
"""Longest accepted path segment, in UTF-8 bytes."""

MAX_SEGMENTS = 12
"""Deepest accepted path."""

BASE_USER = "__base__"
"""Journal `user_id` of shared (non-overlay) content; reserved, never accepted from a caller."""

ASSET_TYPES = ("img", "images", "slides", "videos", "audio")
"""Folders under `static/` that may hold assets."""

CONTENT_EXAMPLE = "content/01-Introduction/02-Variables/03-naming-rules.md"
ASSET_EXAMPLE = "static/images/diagram-1.png"

_BOOK_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_HASH = re.compile(r"[0-9a-f]{64}")
_NAME = r"[A-Za-z0-9][A-Za-z0-9-]*"
CONTENT_PATH = re.compile(
    rf"content/(?P<part>[0-9]{{2}}-{_NAME})/(?P<chapter>[0-9]{{2}}-{_NAME})/"
    rf"(?P<lesson>[0-9]{{2}}-{_NAME})(?P<summary>\.summary)?\.md"
)
_ASSET_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SEGMENT_CHAR_OK = re.compile(r"[\w.-]+")
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)
_LOOKALIKES = frozenset("./\\%:")
_BIDI_AND_INVISIBLE = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff\u115f\u1160\u3164\uffa0"
)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format (bidi, zero-width, soft hyphen), surrogate, private, unassigned, separators."""
_LOOKALIKE_LETTERS = str.maketrans(
    {
        **dict.fromkeys("\u0430\u0251\u03b1", "a"),
        **dict.fromkeys("\u0441\u03f2\u1d04", "c"),
        **dict.fromkeys("\u0501", "d"),
        **dict.fromkeys("\u0435\u04bd", "e"),
        **dict.fromkeys("\u0261", "g"),
        **dict.fromkeys("\u04bb", "h"),
        **dict.fromkeys("\u0456\u0131\u03b9\u04cf\u0406", "i"),
        **dict.fromkeys("\u0458\u03f3", "j"),
        **dict.fromkeys("\u03ba\u043a", "k"),
        **dict.fromkeys("\u043c", "m"),
        **dict.fromkeys("\u0578\u043f", "n"),
        **dict.fromkeys("\u043e\u03bf\u1d0f\u0585", "o"),
        **dict.fromkeys("\u0440\u03c1", "p"),
        **dict.fromkeys("\u051b", "q"),
        **dict.fromkeys("\u0433", "r"),
        **dict.fromkeys("\u0455\ua731", "s"),
        **dict.fromkeys("\u0442\u03c4", "t"),
        **dict.fromkeys("\u03c5\u057d\u1d1c", "u"),
        **dict.fromkeys("\u03bd\u0475", "v"),
        **dict.fromkeys("\u051d\u0461", "w"),
        **dict.fromkeys("\u0445\u03c7", "x"),
        **dict.fromkeys("\u0443\u03b3\u04af", "y"),
        **dict.fromkeys("\u1d22", "z"),
    }
)
"""Letters of other scripts drawn like a Latin letter (Unicode's confusables, the common ones)."""

Kind = Literal["content", "asset"]


@dataclass(frozen=True, slots=True)
class BookPath:
    """A canonical, schema-valid path inside one book (`content/...` or `static/...`)."""

    path: str
    kind: Kind


def is_book_id(value: str) -> bool:
    """Whether `value` is a well-formed book id."""
    return _BOOK_ID.fullmatch(value) is not None


def check_book_id(book_id: object) -> str:
    """Return `book_id` if it matches `^[a-z0-9][a-z0-9-]{1,62}$`.

    Raises:
        InvalidArgument: it does not.
    """
    if not isinstance(book_id, str) or not _BOOK_ID.fullmatch(book_id):
        raise InvalidArgument(
            "book_id must match ^[a-z0-9][a-z0-9-]{1,62}$", field="book_id", example="python-book"
        )
    return book_id


def check_user_id(user_id: object) -> str | None:
    """Return `user_id` (or None) if it is a valid overlay owner.

    Raises:
        InvalidArgument: it is malformed, or it is the reserved `__base__`.
    """
    if user_id is None:
        return None
    if not isinstance(user_id, str) or user_id == BASE_USER or not _USER_ID.fullmatch(user_id):
        raise InvalidArgument(
            "user_id must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$", field="user_id", example="user-123"
        )
    return user_id


def check_hash(value: object, field: str = "expected_hash") -> str | None:
    """Return `value` (or None) if it is a lowercase hex sha256.

    Raises:
        InvalidArgument: it is anything else (empty, `*`, uppercase, short, ...).
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise InvalidArgument(f"{field} must be 64 lowercase hex characters (sha256)", field=field)
    return value


def canonicalize(raw: object) -> str:
    """Return the canonical (NFC) form of a relative book path, or refuse it.

    Refused: non-strings, empty paths, absolute paths, backslashes, `%` (no percent-encoding is
    decoded, so none is accepted), control / bidi / invisible characters, full-width or other
    look-alikes of `.` `/` `\\` `%` `:`, empty, `.` and `..` segments, dot-prefixed segments,
    segments with leading or trailing spaces or dots, Windows device names, and paths or
    segments over the length limits.

    Raises:
        InvalidPath: with a `reason` detail naming the rule broken.
    """
    if not isinstance(raw, str) or raw == "":
        raise _invalid("path must be a non-empty string", "empty")
    return _canonical(raw)


@functools.lru_cache(maxsize=4096)
def _canonical(raw: str) -> str:
    # Cached: agents send the same paths again and again, and the per-character checks cost a
    # lesson's path about 40 us a call here (3 us cached). A refused path raises, so only
    # accepted ones are kept.
    # A cheap bound before any per-character work; the real limit is checked after NFC.
    if len(raw) > 4 * MAX_PATH_BYTES:
        raise _invalid(f"path is longer than {MAX_PATH_BYTES} bytes", "too_long")
    for char in raw:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise _invalid("path contains a control character", "control_character")
        if char in _BIDI_AND_INVISIBLE or 0xD800 <= code <= 0xDFFF:
            raise _invalid("path contains an invisible or bidi-control character", "invisible")
        if char == "\\":
            raise _invalid("path contains a backslash", "backslash")
        if char == "%":
            raise _invalid("path contains '%' (percent-encoding is not accepted)", "percent")
        if code > 0x7F and any(c in _LOOKALIKES for c in unicodedata.normalize("NFKC", char)):
            raise _invalid("path contains a look-alike of '.', '/' or '\\'", "lookalike")
    if raw.startswith("/"):
        raise _invalid("path must be relative (no leading '/')", "absolute")
    if raw.endswith("/"):
        raise _invalid("path must not end with '/'", "trailing_slash")
    path = unicodedata.normalize("NFC", raw)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise _invalid(f"path is longer than {MAX_PATH_BYTES} bytes", "too_long")
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise _invalid(f"path has more than {MAX_SEGMENTS} segments", "too_deep")
    for segment in segments:
        _check_segment(segment)
    return path


def _check_segment(segment: str) -> None:
    if segment == "":
        raise _invalid("path contains an empty segment ('//')", "empty_segment")
    if segment in (".", ".."):
        raise _invalid("path contains a '.' or '..' segment (traversal)", "traversal")
    if segment.startswith("."):
        raise _invalid("path segments must not start with '.'", "dot_prefix")
    if segment.startswith("~"):
        raise _invalid("path segments must not start with '~'", "tilde")
    if segment != segment.strip() or segment.endswith("."):
        raise _invalid("path segments must not start or end with spaces or end with '.'", "edge")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise _invalid(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes", "too_long")
    if not _SEGMENT_CHAR_OK.fullmatch(segment):
        raise _invalid("path segments may hold only letters, digits, '-', '_' and '.'", "charset")
    if _WINDOWS_RESERVED.fullmatch(segment):
        raise _invalid("path segment is a reserved device name", "reserved")


def _invalid(message: str, reason: str) -> InvalidPath:
    return InvalidPath(message, reason=reason)


def classify(raw: object) -> BookPath:
    """Canonicalise `raw` and check it against the book schema (content or asset).

    Raises:
        InvalidPath: the path is unsafe.
        SchemaViolation: the path is safe but fits neither schema.
    """
    path = canonicalize(raw)
    if path.startswith("content/"):
        return _as_content(path)
    if path.startswith("static/"):
        return _as_asset(path)
    raise SchemaViolation(
        "path must start with content/ (lessons, summaries) or static/ (assets)",
        rule="content/{NN-Name}/{NN-Name}/{NN-name}(.summary)?.md or static/{type}/{file}",
        example=CONTENT_EXAMPLE,
    )


def content_path(raw: object) -> BookPath:
    """Canonicalise `raw` and require the lesson schema.

    `content/{NN-Name}/{NN-Name}/{NN-name}(.summary)?.md`: NN two digits, names
    `[A-Za-z0-9][A-Za-z0-9-]*`, exactly three levels below `content/`.

    Raises:
        InvalidPath: the path is unsafe.
        SchemaViolation: it does not follow the lesson schema; the details name the rule.
    """
    return _as_content(canonicalize(raw))


def _as_content(path: str) -> BookPath:
    if CONTENT_PATH.fullmatch(path):
        return BookPath(path, "content")
    raise SchemaViolation(
        f"path must match content/{{NN-Name}}/{{NN-Name}}/{{NN-name}}(.summary)?.md: {_content_hint(path)}",
        rule="content/{NN-Name}/{NN-Name}/{NN-name}(.summary)?.md",
        example=CONTENT_EXAMPLE,
    )


def _content_hint(path: str) -> str:
    segments = path.split("/")
    if segments[0] != "content":
        return "lessons live under content/"
    if len(segments) != 4:
        return f"expected exactly 3 levels below content/, got {len(segments) - 1}"
    labels = ("part", "chapter", "lesson")
    for label, segment in zip(labels, segments[1:], strict=True):
        name = segment
        if label == "lesson":
            if not segment.endswith(".md"):
                return "the lesson file must end in .md"
            name = segment.removesuffix(".md").removesuffix(".summary")
        if not re.fullmatch(rf"[0-9]{{2}}-{_NAME}", name):
            return f"the {label} '{segment}' must look like NN-Name{_name_fault(name)}"
    return "unrecognised form"


def _name_fault(name: str) -> str:
    """What breaks NN-Name in `name`: the digits, the dash, or the first character not allowed."""
    if not re.match(r"[0-9]{2}", name):
        return ": it must start with two digits"
    if name[2:3] != "-":
        return ": the two digits must be followed by '-'"
    bad = next((char for char in name[3:] if not (char.isascii() and (char.isalnum() or char == "-"))), None)
    if bad is not None:
        return f": {bad!r} is not allowed (letters, digits and '-' only)"
    return ": a letter or digit must follow the '-'"


def asset_path(raw: object) -> BookPath:
    """Canonicalise `raw` and require the asset schema `static/{type}/{segments...}`.

    Raises:
        InvalidPath: the path is unsafe.
        SchemaViolation: the asset type or a segment does not fit.
    """
    return _as_asset(canonicalize(raw))


def _as_asset(path: str) -> BookPath:
    segments = path.split("/")
    if (
        len(segments) >= 3
        and segments[0] == "static"
        and segments[1] in ASSET_TYPES
        and all(_ASSET_SEGMENT.fullmatch(s) for s in segments[2:])
    ):
        return BookPath(path, "asset")
    raise SchemaViolation(
        f"asset paths must match static/{{{'|'.join(ASSET_TYPES)}}}/{{name}} with names of "
        "letters, digits, '-', '_' and '.'",
        rule=f"static/({'|'.join(ASSET_TYPES)})/<segments>",
        example=ASSET_EXAMPLE,
    )


def book_uri(book_id: str, path: str, user_id: str | None = None) -> str:
    """The `book://` resource URI of a book file, in `user_id`'s view (percent-encoded)."""
    uri = f"book://{quote(book_id, safe='')}/{quote(path, safe='/')}"
    return f"{uri}?user_id={quote(user_id, safe='')}" if user_id else uri


def parse_book_uri(uri: str) -> dict[str, str]:
    """The book id, path and user id a `book://` URI names (those present, decoded, unchecked);
    empty when `uri` is not a `book://` URI."""
    parts = urlsplit(uri)
    if parts.scheme != "book" or not parts.netloc:
        return {}
    named = {"book_id": unquote(parts.netloc), "path": unquote(parts.path.removeprefix("/"))}
    users = parse_qs(parts.query).get("user_id")
    if users:
        named["user_id"] = users[0]
    return named


def storage_key(book_id: str, path: str, user_id: str | None) -> str:
    """Return the storage key of a canonical book path, base or overlay.

    Layout (kept for existing buckets): `books/{book}/{path}` for shared content and
    `books/{book}/users/{user}/{path}` for a user's overlay.
    """
    if user_id is None or user_id == BASE_USER:
        return f"books/{book_id}/{path}"
    return f"books/{book_id}/users/{user_id}/{path}"


VERSIONS_PREFIX = ".pfs/versions/"
"""Where the bytes of every retained version are kept, once per sha256."""


def version_key(sha256: str) -> str:
    """Return the storage key of the version bytes whose hash is `sha256`."""
    return f"{VERSIONS_PREFIX}{sha256[:2]}/{sha256}"


def invisible_character(text: str) -> str | None:
    """The first character of `text` a reader cannot see as itself (control, bidi, zero-width,
    format, variation selector, filler, unassigned), or None."""
    if text.isascii() and text.isprintable():
        return None  # none of them is printable ASCII, which nearly every path and agent id is
    for char in text:
        code = ord(char)
        if (
            char in _BIDI_AND_INVISIBLE
            or unicodedata.category(char) in _INVISIBLE_CATEGORIES
            or 0xFE00 <= code <= 0xFE0F
            or 0xE0100 <= code <= 0xE01EF
        ):
            return char
    return None


def skeleton(text: str) -> str:
    """`text` as it looks: compatibility forms folded (NFKC), case folded, marks dropped and
    letters of other scripts that are drawn like Latin ones replaced by them. Two strings with
    the same skeleton are look-alikes."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept = "".join(c for c in folded if not unicodedata.combining(c))
    return kept.translate(_LOOKALIKE_LETTERS)


def describe_rejected_path(raw: object, limit: int = 300) -> str:
    """Return a printable, bounded rendering of a refused path for the audit log and logs."""
    text = raw if isinstance(raw, str) else repr(raw)
    if text.isascii() and text.isprintable() and "\\" not in text:
        escaped = text  # what unicode_escape would give, without encoding it
    else:
        escaped = text.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."
