"""Work deferred until a response has been sent (`after_response`): when it runs, in which
order, what a failure does; and over HTTP, that a write's publish is such work and still runs
at once after the answer (not left to recovery)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastmcp import Client
from mcp_types import Implementation
from starlette.types import Message, Receive, Scope, Send

from panaversity_fs.after_response import Work, after_response, deferring
from panaversity_fs.app.transport import AfterResponseMiddleware
from panaversity_fs.config import Settings
from panaversity_fs.paths import storage_key
from panaversity_fs.storage.blobs import BlobStore
from tests.archive_support import http_server
from tests.support import call, until_published


def noting(seen: list[str], name: str) -> Work:
    async def work() -> None:
        seen.append(name)

    return work


async def test_work_outside_a_request_runs_at_once() -> None:
    seen: list[str] = []
    await after_response(noting(seen, "now"))
    seen.append("after")
    assert seen == ["now", "after"]


async def test_deferred_work_runs_on_leaving_in_order_even_from_tasks_started_inside() -> None:
    seen: list[str] = []
    async with deferring():
        await after_response(noting(seen, "first"))
        await asyncio.create_task(after_response(noting(seen, "from a task")))
        await after_response(noting(seen, "last"))
        seen.append("body done")
    assert seen == ["body done", "first", "from a task", "last"]


async def test_a_failing_item_is_logged_the_rest_runs_and_work_given_meanwhile_runs_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def fails() -> None:
        raise RuntimeError("storage gone")

    async def asks_for_more() -> None:
        await after_response(noting(seen, "asked meanwhile"))
        seen.append("asker done")

    with caplog.at_level(logging.ERROR, logger="panaversity_fs.after_response"):
        async with deferring():
            await after_response(fails)
            await after_response(asks_for_more)
            await after_response(noting(seen, "last"))
    assert seen == ["asked meanwhile", "asker done", "last"]
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info and r.exc_info[1]] == [("storage gone",)]


async def test_deferred_work_runs_even_when_the_body_raises() -> None:
    seen: list[str] = []
    with pytest.raises(ValueError):
        async with deferring():
            await after_response(noting(seen, "deferred"))
            raise ValueError("handler failed")
    assert seen == ["deferred"]


async def test_the_middleware_runs_deferred_work_after_the_whole_response_was_sent() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await after_response(noting(events, "deferred work"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        events.append(message["type"])

    await AfterResponseMiddleware(app)({"type": "http", "path": "/mcp"}, receive, send)
    assert events == ["http.response.start", "http.response.body", "deferred work"]


async def test_a_write_over_http_is_published_right_after_its_answer(db_settings: Settings) -> None:
    """The write's publish is deferred past its answer, and then runs: the row is no longer
    pending and the bytes are at their final key well before recovery would look (tests
    run recovery hourly; a pending publish is taken over after 5 s)."""
    path = "content/01-Part/01-Chapter/01-lesson.md"
    info = Implementation(name="after-response-agent", version="1")
    async with http_server(db_settings) as url, Client(f"{url}/mcp", client_info=info) as c:
        created = await call(c, "write_content", book_id="after-book", path=path, content="# one\n")
        await call(
            c,
            "write_content",
            book_id="after-book",
            path=path,
            content="# two\n",
            expected_hash=created["file_hash"],
        )
        await until_published(db_settings, "after-book", path, seconds=2.0)
        store = BlobStore.from_settings(db_settings)
        try:
            assert await store.read(storage_key("after-book", path, None)) == b"# two\n"
        finally:
            store.close()
