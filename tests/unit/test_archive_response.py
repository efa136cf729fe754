"""`ArchiveResponse` ends its body when the response ends, whatever ended it.

The body's `finally` writes the download's log line and metrics (`archive.service`); Starlette
leaves a body whose client went away suspended, so without an explicit close they would wait
for the garbage collector. Here the test keeps its own reference to the body, as any cycle
would, so only an explicit close can run that `finally`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from panaversity_fs.routes.archive import ArchiveResponse


async def test_a_download_whose_client_left_is_closed_and_its_slot_given_back() -> None:
    events: list[str] = []
    first_block_sent = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for _ in range(1000):
                yield b"x" * 1024
        finally:
            events.append("body ended")

    stream = body()
    response = ArchiveResponse(stream, lambda: events.append("slot released"), 5.0, headers={})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_block_sent.set()
            await asyncio.sleep(3600)  # the client reads nothing more

    async def receive() -> dict[str, Any]:
        await first_block_sent.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/archives/b.zip", "headers": []}
    await asyncio.wait_for(response(scope, receive, send), 10)
    assert events == ["body ended", "slot released"]
    assert stream.ag_frame is None  # finished, not suspended
