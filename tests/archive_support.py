"""Helpers of the archive tests: an in-process HTTP server, archive tickets and downloads, ZIP
parsing (generated books are in `testkit.books`)."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn
from fastmcp import Client
from mcp_types import Implementation
from stream_unzip import stream_unzip

from panaversity_fs.app.server import create_app
from panaversity_fs.archive.builder import MANIFEST_NAME
from panaversity_fs.config import Settings
from testkit.processes import free_port
from tests.support import call


@asynccontextmanager
async def http_server(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """`create_app(settings)` served by uvicorn in this process on `port` (default: a free one);
    yields its URL."""
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def ticket(base_url: str, agent: str = "archive-agent-1", **arguments: Any) -> dict[str, Any]:
    """Call `get_book_archive` over streamable HTTP."""
    info = Implementation(name=agent, version="1")
    async with Client(f"{base_url}/mcp", client_info=info) as c:
        return await call(c, "get_book_archive", **arguments)


async def fetch(url: str, after: str | None = None) -> httpx.Response:
    """GET an archive URL (optionally resumed `after` a path); the body is read whole."""
    if after is not None:
        url = f"{url}&after={quote(after, safe='')}"
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.get(url)


def members(data: bytes) -> dict[str, bytes]:
    """Every member of a complete ZIP, checked by Python's `zipfile` (CRC included)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def complete_members(data: bytes) -> list[tuple[str, bytes]]:
    """The members of a possibly truncated ZIP that arrived whole, in order (stream_unzip)."""
    found: list[tuple[str, bytes]] = []
    try:
        for name, _size, chunks in stream_unzip([data]):
            body = b"".join(chunks)
            found.append((name.decode(), body))
    except Exception:
        pass
    return found


def manifest_of(files: dict[str, bytes]) -> dict[str, Any]:
    """The parsed manifest member."""
    return json.loads(files[MANIFEST_NAME])
