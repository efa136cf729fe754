"""The one exception tree of PanaversityFS, and its wire form.

```
PanaversityFSError          code              HTTP  meaning for the caller
 ├── InvalidPath            INVALID_PATH      400   unsafe path; nothing was touched
 ├── SchemaViolation        SCHEMA_VIOLATION  400   safe path outside the book schema
 ├── InvalidArgument        INVALID_ARGUMENT  400   any other bad argument
 ├── NotFound               NOT_FOUND         404
 ├── Conflict               CONFLICT          409   expected_hash is stale (carries current_hash)
 ├── HashRequired           HASH_REQUIRED     409   file exists, no expected_hash (current_hash)
 ├── Forbidden              FORBIDDEN         403
 ├── Unauthenticated        UNAUTHENTICATED   401
 ├── TooLarge               TOO_LARGE         413
 ├── RateLimited            RATE_LIMITED      429   retry after `retry_after` seconds
 ├── Unavailable            UNAVAILABLE       503   transient; safe to retry
 └── Internal               INTERNAL          500
```

Every error renders as the JSON object `{"error": CODE, "message": ..., **details}`: a tool
error's text, or an HTTP route's body with the class's status. Messages and details never carry
tracebacks, absolute paths, SQL, or another user's data.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from fastmcp.exceptions import FastMCPError


class PanaversityFSError(FastMCPError):
    """Base of every error a caller can see.

    It derives from FastMCP's base error only so that FastMCP hands it, unmasked, to the one
    translation point (`panaversity_fs.app.middleware.errors.TranslateErrors`).
    """

    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    log_level: int

    def __init__(self, message: str, **details: Any) -> None:
        transient = self.code in ("UNAVAILABLE", "INTERNAL")
        super().__init__(message, log_level=logging.WARNING if transient else logging.DEBUG)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form: `{"error": code, "message": ..., **details}`."""
        return {"error": self.code, "message": self.message, **self.details}

    def to_json(self) -> str:
        """Return the wire form as compact JSON text."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @property
    def retry_after(self) -> float | None:
        """Seconds the caller should wait before trying again, when the error says so."""
        value = self.details.get("retry_after")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class InvalidPath(PanaversityFSError):
    """The path is unsafe (traversal, encoding tricks, control characters, ...)."""

    code = "INVALID_PATH"
    http_status = 400


class SchemaViolation(PanaversityFSError):
    """The path is safe but does not follow the book schema."""

    code = "SCHEMA_VIOLATION"
    http_status = 400


class InvalidArgument(PanaversityFSError):
    """An argument other than a path is malformed."""

    code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(PanaversityFSError):
    """The file does not exist (or, with expected_hash, cannot be updated)."""

    code = "NOT_FOUND"
    http_status = 404


def unknown_book(book: str) -> NotFound:
    """The refusal of a call naming a book that has no files (none was ever written)."""
    return NotFound(
        f"book {book} has no files; list_books shows them (writing a lesson starts a book)", book_id=book
    )


class Conflict(PanaversityFSError):
    """`expected_hash` does not match the file's current hash."""

    code = "CONFLICT"
    http_status = 409


class HashRequired(PanaversityFSError):
    """The file exists; replacing it needs its current hash as `expected_hash`."""

    code = "HASH_REQUIRED"
    http_status = 409


class Forbidden(PanaversityFSError):
    """The caller is authenticated but may not do this."""

    code = "FORBIDDEN"
    http_status = 403


class Unauthenticated(PanaversityFSError):
    """The caller has no usable identity."""

    code = "UNAUTHENTICATED"
    http_status = 401


class TooLarge(PanaversityFSError):
    """The payload is over a configured limit."""

    code = "TOO_LARGE"
    http_status = 413


class RateLimited(PanaversityFSError):
    """The caller is over its rate limit; retry after the hinted delay."""

    code = "RATE_LIMITED"
    http_status = 429


class Unavailable(PanaversityFSError):
    """A dependency (database, storage) failed transiently; the call changed nothing."""

    code = "UNAVAILABLE"
    http_status = 503


def outcome_unknown() -> Unavailable:
    """The answer of a change whose commit failed in a way that leaves it unknown whether it
    happened (the database is unreachable to ask): the agent must look before it retries."""
    return Unavailable(
        "the database failed while committing and the outcome is unknown; re-read the file before retrying",
        outcome_unknown=True,
    )


class Internal(PanaversityFSError):
    """An unexpected failure; details are in the server log under the request id."""

    code = "INTERNAL"
    http_status = 500


class ConfigurationError(Exception):
    """The settings cannot start a server (raised at start-up, never to a caller)."""
