"""The one exception tree of PanaversityFS, and its wire form.

```
PanaversityFSError          code            meaning for the caller
 ├── InvalidPath            INVALID_PATH    unsafe path; nothing was touched
 ├── SchemaViolation        SCHEMA_VIOLATION safe path outside the book schema
 ├── InvalidArgument        INVALID_ARGUMENT any other bad argument
 ├── NotFound               NOT_FOUND
 ├── Conflict               CONFLICT        expected_hash is stale (carries current_hash)
 ├── HashRequired           HASH_REQUIRED   file exists, no expected_hash (carries current_hash)
 ├── Forbidden              FORBIDDEN
 ├── Unauthenticated        UNAUTHENTICATED
 ├── TooLarge               TOO_LARGE
 ├── RateLimited            RATE_LIMITED
 ├── Unavailable            UNAVAILABLE     transient; safe to retry
 └── Internal               INTERNAL
```

Every error renders as the JSON object `{"error": CODE, "message": ..., **details}`. Messages and
details never carry tracebacks, absolute paths, SQL, or another user's data.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from fastmcp.exceptions import FastMCPError


class PanaversityFSError(FastMCPError):
    """Base of every error a caller can see.

    It derives from FastMCP's base error only so that FastMCP hands it, unmasked, to the one
    translation point (`panaversity_fs.app.middleware.ToolCallMiddleware`).
    """

    code: ClassVar[str] = "INTERNAL"
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


class InvalidPath(PanaversityFSError):
    """The path is unsafe (traversal, encoding tricks, control characters, ...)."""

    code = "INVALID_PATH"


class SchemaViolation(PanaversityFSError):
    """The path is safe but does not follow the book schema."""

    code = "SCHEMA_VIOLATION"


class InvalidArgument(PanaversityFSError):
    """An argument other than a path is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(PanaversityFSError):
    """The file does not exist (or, with expected_hash, cannot be updated)."""

    code = "NOT_FOUND"


class Conflict(PanaversityFSError):
    """`expected_hash` does not match the file's current hash."""

    code = "CONFLICT"


class HashRequired(PanaversityFSError):
    """The file exists; replacing it needs its current hash as `expected_hash`."""

    code = "HASH_REQUIRED"


class Forbidden(PanaversityFSError):
    """The caller is authenticated but may not do this."""

    code = "FORBIDDEN"


class Unauthenticated(PanaversityFSError):
    """The caller has no usable identity."""

    code = "UNAUTHENTICATED"


class TooLarge(PanaversityFSError):
    """The payload is over a configured limit."""

    code = "TOO_LARGE"


class RateLimited(PanaversityFSError):
    """The caller is over its rate limit; retry after the hinted delay."""

    code = "RATE_LIMITED"


class Unavailable(PanaversityFSError):
    """A dependency (database, storage) failed transiently; the call changed nothing."""

    code = "UNAVAILABLE"


class Internal(PanaversityFSError):
    """An unexpected failure; details are in the server log under the request id."""

    code = "INTERNAL"


class ConfigurationError(Exception):
    """The settings cannot start a server (raised at start-up, never to a caller)."""
