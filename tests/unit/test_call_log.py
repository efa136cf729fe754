"""A call's log line: written once its answer has been sent, with the call's context, whether
the call succeeded or failed; its metrics are recorded before the answer leaves."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import MiddlewareContext
from mcp_types import CallToolRequestParams

from panaversity_fs.after_response import deferring
from panaversity_fs.app.middleware.observe import ObserveCalls
from panaversity_fs.app.resources import ServerState
from panaversity_fs.errors import Conflict
from panaversity_fs.logs import JsonFormatter, request_context

PATH = "content/01-Part/01-Chapter/01-lesson.md"


def read_call() -> MiddlewareContext[Any]:
    message = CallToolRequestParams(name="read_content", arguments={"book_id": "log-book", "path": PATH})
    return MiddlewareContext(message=message, method="tools/call")


class JsonLines(logging.Handler):
    """The call log's lines as the server writes them (formatted when written, as its context is)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "tool call":
            self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def call_log() -> Iterator[JsonLines]:
    logger = logging.getLogger("panaversity_fs.calls")
    handler, level = JsonLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_the_line_is_written_after_the_answer_with_the_calls_context(
    call_log: JsonLines,
) -> None:
    seen: dict[str, Any] = {}

    async def answer(context: MiddlewareContext[Any]) -> str:
        seen.update(request_context.get() or {})
        return "the answer"

    async with deferring():
        assert await ObserveCalls(ServerState()).around(read_call(), answer) == "the answer"
        assert call_log.lines == []
    lines = call_log.lines
    assert len(lines) == 1
    line = lines[0]
    assert (line["tool"], line["book_id"], line["path"], line["status"]) == (
        "read_content",
        "log-book",
        PATH,
        "ok",
    )
    assert line["request_id"] == seen["request_id"]  # the id the call ran under
    assert request_context.get() is None


async def test_a_failed_call_is_logged_with_its_code(call_log: JsonLines) -> None:
    async def refuse(context: MiddlewareContext[Any]) -> str:
        raise ToolError(Conflict("the file changed; read it again").to_json())  # as TranslateErrors raises it

    async with deferring():
        with pytest.raises(ToolError):
            await ObserveCalls(ServerState()).around(read_call(), refuse)
    assert [(line["tool"], line["status"]) for line in call_log.lines] == [("read_content", "CONFLICT")]
