"""JSON logs, one object per line, with the request's context attached."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_context: ContextVar[dict[str, Any] | None] = ContextVar("pfs_request_context", default=None)
"""Fields (request id, agent, tool, book, path) added to every log line of the current call."""


def current_request_id() -> str | None:
    """The id the current tool call goes by in logs and in the audit log (None outside a call)."""
    context = request_context.get()
    value = context.get("request_id") if context else None
    return str(value) if value is not None else None


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: time, level, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        context = request_context.get()
        if context:
            payload.update(context)
        payload.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        )
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = record.exc_info[0].__name__
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON at `level` (uvicorn's and fastmcp's too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastmcp", "mcp"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # From INFO down these log every statement with its parameters (SQLAlchemy's echo): idempotency
    # keys, user ids, paths; and formatting them costs a tenth of a read's CPU.
    for chatty in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg", "botocore", "urllib3"):
        logging.getLogger(chatty).setLevel(max(logging.getLogger().level, logging.WARNING))
