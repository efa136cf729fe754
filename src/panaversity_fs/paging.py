"""Opaque paging cursors: base64url JSON bound to the query they continue.

A cursor records where the previous page stopped and a digest of the arguments that shaped it
(tool, book, user, scope, pattern, ...). Reusing it with other arguments, or passing anything
that is not a cursor we issued, is an `INVALID_ARGUMENT`. Cursors are not secret and need no
signature: a forged one can only name a position in a listing the caller may read anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from panaversity_fs.errors import InvalidArgument

MAX_CURSOR_CHARS = 2048
MAX_POSITION = 2**63 - 1
"""Largest integer a cursor may carry (the databases' BIGINT)."""


FILE_OVERHEAD = 400
"""Bytes a page spends on one file besides its text: its description and its resource block."""


def wire_bytes(text: str) -> int:
    """Bytes `text` takes inside a JSON answer (escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", errors="surrogatepass"))


def query_digest(*parts: object) -> str:
    """A short digest of the arguments a cursor belongs to."""
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def encode(query: str, position: dict[str, Any]) -> str:
    """Return the cursor continuing `query` (a `query_digest`) at `position`."""
    payload = json.dumps({"q": query, **position}, separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(cursor: object, query: str) -> dict[str, Any]:
    """Return the position recorded in `cursor` if it was issued for `query`.

    Raises:
        InvalidArgument: the cursor is malformed or was issued for other arguments.
    """
    if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR_CHARS:
        raise _bad("cursor must be a next_cursor value returned by the previous page")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad("cursor is not a cursor this server issued") from None
    if not isinstance(payload, dict):
        raise _bad("cursor is not a cursor this server issued")
    position: dict[str, Any] = dict(payload)  # type: ignore[arg-type]
    if position.pop("q", None) != query:
        raise _bad("cursor belongs to a different query (book, user, scope or pattern changed)")
    return position


def text_field(position: dict[str, Any], name: str) -> str:
    """The string `name` of a decoded position.

    Raises:
        InvalidArgument: it is missing or not a string.
    """
    value = position.get(name)
    if not isinstance(value, str):
        raise _bad("cursor is not a cursor this server issued")
    return value


def int_field(position: dict[str, Any], name: str) -> int:
    """The non-negative integer `name` of a decoded position.

    Raises:
        InvalidArgument: it is missing or not an integer in 0..2**63-1.
    """
    value = position.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_POSITION:
        raise _bad("cursor is not a cursor this server issued")
    return value


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(message, field="cursor")
