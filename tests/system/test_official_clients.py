"""The official MCP Python SDK's low-level client, at its defaults, against a served server.

That client caps one server-sent event at 1 MiB; the server answers with plain JSON bodies
whenever nothing precedes the answer, so it reads everything the server accepts: the largest
lesson, a full book page, an inline image. It also validates every structured result against
the tool's output schema. Resources, completions, prompts and errors are exercised too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.archive_support import http_server
from tests.asset_support import png
from tests.books_support import lesson
from tests.conftest import Backends
from tests.support import BOOK

LIMIT = 2 * 1024 * 1024
TEMPLATE = "book://{book_id}/{path*}{?user_id}"


@asynccontextmanager
async def sdk_session(url: str) -> AsyncIterator[ClientSession]:
    """An initialized SDK session (the 2025-11-25 handshake), all settings at their defaults."""
    async with (
        streamable_http_client(f"{url}/mcp") as (read, write),
        ClientSession(
            read, write, client_info=types.Implementation(name="sdk-agent", version="1")
        ) as session,
    ):
        await session.initialize()
        await session.list_tools()  # the session validates results against these output schemas
        yield session


def structured(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


def text_of(block: types.ContentBlock) -> str:
    assert isinstance(block, types.TextContent), block
    return block.text


async def test_the_sdk_reads_the_largest_lesson_a_full_page_and_an_inline_image(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    largest = "# Big\n" + "y" * (LIMIT - 6)
    chapter = {lesson(1, 2, n): f"# {n}\n" + "z" * 150_000 for n in range(1, 11)}
    image = png(1, size=1_200_000)
    async with http_server(settings) as url, sdk_session(url) as sdk:
        created = structured(
            await sdk.call_tool(
                "write_content", {"book_id": BOOK, "path": lesson(1, 1, 1), "content": largest}
            )
        )
        for path, text in chapter.items():
            structured(await sdk.call_tool("write_content", {"book_id": BOOK, "path": path, "content": text}))
        read = await sdk.call_tool("read_content", {"book_id": BOOK, "path": lesson(1, 1, 1)})
        pages = []
        cursor: str | None = None
        while True:
            arguments = {"book_id": BOOK, "scope": "chapter", "path": "content/01-Part1/02-Chapter2"}
            page = await sdk.call_tool("read_content", arguments | ({"cursor": cursor} if cursor else {}))
            pages.append(page)
            cursor = structured(page).get("next_cursor")
            if cursor is None:
                break
        uploaded = structured(
            await sdk.call_tool(
                "upload_asset",
                {
                    "book_id": BOOK,
                    "asset_type": "images",
                    "filename": "big.png",
                    "binary_data": base64.b64encode(image).decode(),
                },
            )
        )
        inline = await sdk.call_tool(
            "get_asset", {"book_id": BOOK, "path": "static/images/big.png", "include_binary": True}
        )
    assert text_of(read.content[0]) == largest
    assert structured(read)["file_hash"] == created["file_hash"] and "content" not in structured(read)
    served = {
        block.resource.uri: block.resource.text
        for page in pages
        for block in page.content
        if isinstance(block, types.EmbeddedResource)
        and isinstance(block.resource, types.TextResourceContents)
    }
    assert served == {f"book://{BOOK}/{path}": text for path, text in chapter.items()}
    assert 1 < len(pages) < len(chapter)  # pages are full (about 1 MB each), not one file each
    image_block = inline.content[0]
    assert isinstance(image_block, types.ImageContent) and image_block.mime_type == "image/png"
    assert base64.b64decode(image_block.data) == image
    link = inline.content[1]
    assert isinstance(link, types.ResourceLink) and link.uri == structured(inline)["download_url"]
    assert uploaded["file_hash"] == structured(inline)["file_hash"]


async def test_the_sdk_meets_errors_resources_completions_and_the_prompt(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    uri = f"book://{BOOK}/{lesson(1, 1, 1)}"
    async with http_server(settings) as url, sdk_session(url) as sdk:
        written = structured(
            await sdk.call_tool(
                "write_content", {"book_id": BOOK, "path": lesson(1, 1, 1), "content": "# One\n"}
            )
        )
        missing = await sdk.call_tool("read_content", {"book_id": BOOK, "path": lesson(1, 1, 2)})
        capabilities = sdk.initialize_result.capabilities if sdk.initialize_result else None
        templates = await sdk.list_resource_templates()
        listed = await sdk.list_resources()
        resource = await sdk.read_resource(uri)
        gone = await raised(sdk.read_resource(f"book://{BOOK}/{lesson(1, 1, 2)}"))
        ref = types.ResourceTemplateReference(type="ref/resource", uri=TEMPLATE)
        books = await sdk.complete(ref, {"name": "book_id", "value": BOOK[:3]})
        paths = await sdk.complete(ref, {"name": "path", "value": "content/01-P"}, {"book_id": BOOK})
        prompts = await sdk.list_prompts()
        prompt = await sdk.get_prompt(
            "edit_lesson", {"book_id": BOOK, "path": lesson(1, 1, 1), "change": "x"}
        )
    assert missing.is_error
    error = json.loads(text_of(missing.content[0]))
    assert error["error"] == "NOT_FOUND" and "glob_search" in error["message"]
    assert capabilities is not None and capabilities.logging is None
    assert capabilities.completions is not None and capabilities.prompts is not None
    assert [t.uri_template for t in templates.resource_templates] == [TEMPLATE]
    assert templates.resource_templates[0].mime_type == "text/markdown"
    assert listed.resources == []
    contents = resource.contents[0]
    assert isinstance(contents, types.TextResourceContents) and contents.text == "# One\n"
    assert contents.mime_type == "text/markdown" and contents.meta is not None
    assert contents.meta["file_hash"] == written["file_hash"]
    assert isinstance(gone, Exception) and "NOT_FOUND" in str(gone)
    assert books.completion.values == [BOOK]
    assert paths.completion.values == [lesson(1, 1, 1)]
    assert [p.name for p in prompts.prompts] == ["edit_lesson"]
    assert "expected_hash" in text_of(prompt.messages[0].content)


async def raised(awaitable: Any) -> BaseException | None:
    try:
        await awaitable
    except Exception as exc:
        return exc
    return None


async def test_answers_are_json_unless_progress_comes_first(backends: Backends) -> None:
    """A request is answered with one JSON body; one whose tool reports progress streams it, then
    the answer."""
    settings = await backends.settings("sqlite-fs")
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    async with http_server(settings) as url, httpx.AsyncClient(timeout=30) as http:
        opened = await http.post(f"{url}/mcp", json=init, headers=headers)
        session = {
            **headers,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        await http.post(
            f"{url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
        )

        async def call(
            rpc_id: int, name: str, arguments: dict[str, Any], meta: dict[str, Any]
        ) -> httpx.Response:
            params = {"name": name, "arguments": arguments, "_meta": meta}
            body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}
            return await http.post(f"{url}/mcp", json=body, headers=session)

        write = await call(2, "write_content", {"book_id": BOOK, "path": lesson(1, 1, 1), "content": "x"}, {})
        tokened = await call(
            3, "read_content", {"book_id": BOOK, "path": lesson(1, 1, 1)}, {"progressToken": "r-3"}
        )
        chatty = await call(4, "validate_book", {"book_id": BOOK}, {"progressToken": "p-4"})
    assert write.headers["content-type"] == "application/json" and write.json()["id"] == 2
    assert tokened.headers["content-type"] == "application/json"  # asked for progress, reported none
    events = [json.loads(line[5:]) for line in chatty.text.splitlines() if line.startswith("data:")]
    assert events[0]["method"] == "notifications/progress" and events[0]["params"]["progressToken"] == "p-4"
    assert events[-1]["id"] == 4 and events[-1]["result"]["structuredContent"]["valid"] is True
