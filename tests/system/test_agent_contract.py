"""What an agent meets on the wire: a lean catalogue that states its rules and follows the
token's scopes, answers that carry content once, messages that name the safe next step, and
OAuth discovery for clients without a token.

The walkthrough plays an agent that knows only what tool descriptions, results and error
messages tell it: each step's decision is taken from the text it was just given.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
from fastmcp import Client
from mcp_types import Implementation, ResourceLink, TextContent

from panaversity_fs.app.server import create_server
from testkit.mcp_http import RawSession
from testkit.processes import free_port
from tests.archive_support import http_server
from tests.auth_support import AUDIENCE, ISSUER, SECRET, hs_token
from tests.books_support import lesson
from tests.conftest import Backends
from tests.support import BOOK, audit_of, call, client, error_of

CATALOGUE_LIMIT = 9000
README_LESSON = "content/01-Introduction/01-Setup/01-install-python.md"
READ_TOOLS = {
    "read_content",
    "list_books",
    "validate_book",
    "glob_search",
    "grep_search",
    "get_book_archive",
    "get_asset",
    "list_assets",
    "delta_build",
    "plan_build",
    "list_versions",
    "diff_content",
}


def catalogue_bytes(tools: list[Any]) -> int:
    """What a host sends a model for these tools: name, description, input schema (compact JSON)."""
    shown = [{"name": t.name, "description": t.description, "inputSchema": t.inputSchema} for t in tools]
    return len(json.dumps(shown, separators=(",", ":")))


AUTH: dict[str, Any] = {
    "jwt_secret": SECRET,
    "auth_issuer": ISSUER,
    "auth_audience": AUDIENCE,
    "jwt_leeway": 60,
}


def http_client(url: str, token: str, agent: str) -> Client[Any]:
    return Client(f"{url}/mcp", auth=token, client_info=Implementation(name=agent, version="1"))


async def test_the_catalogue_is_lean_and_states_its_rules(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings)) as c:
        tools = {tool.name: tool for tool in await c.list_tools()}
    assert catalogue_bytes(list(tools.values())) <= CATALOGUE_LIMIT
    write = tools["write_content"].inputSchema["properties"]
    assert write["book_id"]["pattern"] and write["user_id"]["pattern"]
    assert write["expected_hash"]["pattern"] == "^[0-9a-f]{64}$"
    assert "anyOf" not in json.dumps([t.inputSchema for t in tools.values()])
    assert tools["upload_asset"].inputSchema["properties"]["asset_type"]["enum"] == [
        "img",
        "images",
        "slides",
        "videos",
        "audio",
    ]
    grep = tools["grep_search"].inputSchema["properties"]["max_results"]
    assert (grep["minimum"], grep["maximum"]) == (1, 1000) and "default" not in grep
    assert tools["revert_changes"].inputSchema["properties"]["since"]["format"] == "date-time"
    assert tools["delta_build"].inputSchema["properties"]["since"]["format"] == "date-time"
    assert all(tool.title and tool.title != tool.name for tool in tools.values())
    assert all(tool.annotations is not None for tool in tools.values())


async def test_output_schemas_never_require_what_results_leave_out(backends: Backends) -> None:
    """Results leave nulls out, so no nullable field may be required (SDKs validate results)."""
    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings)) as c:
        tools = await c.list_tools()

    def required_nullables(node: Any, where: str) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            properties = node.get("properties", {})
            for name in node.get("required", []):
                spec = properties.get(name, {})
                if spec.get("type") == "null" or any(o.get("type") == "null" for o in spec.get("anyOf", [])):
                    found.append(f"{where}.{name}")
            for key, value in node.items():
                found += required_nullables(value, f"{where}.{key}")
        elif isinstance(node, list):
            for item in node:
                found += required_nullables(item, where)
        return found

    problems = [p for tool in tools for p in required_nullables(tool.outputSchema, tool.name)]
    assert all(tool.outputSchema for tool in tools) and problems == []


async def test_tools_list_follows_the_tokens_scopes_and_the_server_still_refuses(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", **AUTH)
    async with http_server(settings) as url:
        async with http_client(url, hs_token("reader-agent", "fs:read"), "reader-agent") as reader:
            offered = {tool.name for tool in await reader.list_tools()}
            refused = await error_of(reader, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="x")
        async with http_client(
            url, hs_token("bound-agent", "fs:write", user_id="alice"), "bound-agent"
        ) as bound:
            bound_offered = {tool.name for tool in await bound.list_tools()}
        async with http_client(url, hs_token("admin-agent"), "admin-agent") as admin:
            every = await admin.list_tools()
    assert offered == READ_TOOLS
    assert refused["error"] == "FORBIDDEN" and "fs:write" in refused["message"]
    assert "validate_book" not in bound_offered and "query_audit" not in bound_offered
    assert "revert_changes" not in bound_offered and "restore_version" in bound_offered
    assert "write_content" in bound_offered
    assert len(every) == 21 and catalogue_bytes(every) <= CATALOGUE_LIMIT
    denied = await audit_of(settings, agent_id="reader-agent", operation="write_content")
    assert [(row["status"], row["error_code"]) for row in denied] == [("refused", "FORBIDDEN")]


async def test_a_lesson_read_costs_its_bytes_once(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    text = "".join(f'Line {n}: a "quoted" word and some more text for the lesson.\n' for n in range(900))
    async with http_server(settings) as url, Client(f"{url}/mcp") as c:
        await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content=text)
        for n in range(2, 30):
            await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, n), content="one match here\n" * 2)
        read = await raw_call(url, "read_content", {"book_id": BOOK, "path": lesson(1, 1, 1)})
        grep = await raw_call(url, "grep_search", {"book_id": BOOK, "pattern": "match"})
    assert len(text.encode()) >= 50_000
    assert len(read) <= 1.15 * len(text.encode())
    answer = json.loads(read)["result"]
    assert answer["content"][0]["text"] == text and "content" not in answer["structuredContent"]
    matches = json.loads(grep)["result"]["structuredContent"]["matches"]
    assert matches == 56 and len(grep) <= 220 * matches


async def raw_call(url: str, tool: str, arguments: dict[str, Any]) -> bytes:
    """The exact bytes of one `tools/call` answer (2025-11-25 handshake, raw HTTP)."""
    async with httpx.AsyncClient(timeout=30) as http:
        session = RawSession(http, f"{url}/mcp")
        await session.open()
        answer, _ = await session.rpc("tools/call", {"name": tool, "arguments": arguments})
    assert answer.headers["content-type"] == "application/json"
    return answer.content


class Agent:
    """Calls tools and keeps only what a model sees: the content blocks."""

    def __init__(self, c: Client[Any]) -> None:
        self.c = c

    async def ask(self, tool: str, **arguments: Any) -> tuple[bool, list[Any]]:
        result = await self.c.call_tool(tool, arguments, raise_on_error=False)
        return result.is_error, list(result.content)

    @staticmethod
    def facts(blocks: list[Any]) -> dict[str, Any]:
        """The JSON description a result ends with (what a model reads hashes from)."""
        last = blocks[-1]
        assert isinstance(last, TextContent)
        return json.loads(last.text)


async def test_an_agent_finds_its_way_by_what_the_server_says(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    path = lesson(1, 1, 1)
    async with http_server(settings) as url, Client(f"{url}/mcp") as c:
        agent = Agent(c)
        described = {tool.name: tool.description or "" for tool in await c.list_tools()}
        assert "omit expected_hash" in described["write_content"]  # so: create without a hash
        failed, blocks = await agent.ask("write_content", book_id=BOOK, path=path, content="# Draft\n")
        assert not failed and agent.facts(blocks)["mode"] == "created"

        failed, blocks = await agent.ask("write_content", book_id=BOOK, path=path, content="# Blind\n")
        blind = json.loads(blocks[0].text)
        assert failed and blind["error"] == "HASH_REQUIRED"
        assert "read it" in blind["message"] and "file_hash" in blind["message"]  # so: read first

        failed, blocks = await agent.ask("read_content", book_id=BOOK, path=path)
        assert not failed and blocks[0].text == "# Draft\n"  # the markdown as it is
        first_hash = agent.facts(blocks)["file_hash"]
        failed, blocks = await agent.ask(
            "write_content", book_id=BOOK, path=path, content="# Draft\nmine\n", expected_hash=first_hash
        )
        assert not failed and agent.facts(blocks)["mode"] == "updated"

        failed, blocks = await agent.ask(
            "write_content", book_id=BOOK, path=path, content="# Draft\nstale\n", expected_hash=first_hash
        )
        stale = json.loads(blocks[0].text)
        assert failed and stale["error"] == "CONFLICT" and "re-read, merge, retry" in stale["message"]

        failed, blocks = await agent.ask("read_content", book_id=BOOK, path=path)
        current, current_hash = blocks[0].text, agent.facts(blocks)["file_hash"]
        merged = current + "stale\n"
        failed, blocks = await agent.ask(
            "write_content", book_id=BOOK, path=path, content=merged, expected_hash=current_hash
        )
        assert not failed and agent.facts(blocks)["version"] == 3

        failed, blocks = await agent.ask(
            "write_content",
            book_id=BOOK,
            path=path,
            content=merged + "alice\n",
            user_id="alice",
            expected_hash=agent.facts(blocks)["file_hash"],
        )
        assert not failed and agent.facts(blocks)["source"] == "overlay"
        _, mine = await agent.ask("read_content", book_id=BOOK, path=path, user_id="alice")
        _, shared = await agent.ask("read_content", book_id=BOOK, path=path)
        assert mine[0].text.endswith("alice\n") and shared[0].text == merged

        failed, blocks = await agent.ask("get_book_archive", book_id=BOOK, user_id="alice")
        link = next(block for block in blocks if isinstance(block, ResourceLink))
        async with httpx.AsyncClient(timeout=30) as http:
            archive = (await http.get(str(link.uri))).content
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        assert zipped.read(path).decode() == merged + "alice\n"


async def test_messages_name_the_field_and_the_next_step(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", **AUTH)
    async with http_server(settings) as url:
        async with http_client(url, hs_token("writer-agent"), "writer-agent") as c:
            await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="x")
            too_many = await error_of(c, "grep_search", book_id=BOOK, pattern="x", max_results=5000)
            bookless = await error_of(c, "grep_search", pattern="x")
            underscore = await error_of(
                c,
                "write_content",
                book_id=BOOK,
                path="content/01-Intro/01-Basics/01-Hello_World.md",
                content="x",
            )
            unknown = await error_of(c, "get_book_archive", book_id="pyhton-book")
        async with http_client(
            url, hs_token("bound-agent", "fs:write", user_id="alice"), "bound-agent"
        ) as bound:
            shared = await error_of(bound, "write_content", book_id=BOOK, path=lesson(1, 1, 2), content="x")
    assert too_many["field"] == "max_results" and "max_results" in too_many["message"]
    assert "pass book_id, or all_books: true" in bookless["message"]
    assert "'_' is not allowed" in underscore["message"]
    assert unknown["error"] == "NOT_FOUND" and "writing a lesson starts a book" in unknown["message"]
    assert "pass user_id 'alice'" in shared["message"]


async def test_a_client_without_a_token_learns_where_to_get_one(backends: Backends) -> None:
    port = free_port()
    published = await backends.settings("sqlite-fs", **AUTH, public_url=f"http://127.0.0.1:{port}")
    async with http_server(published, port) as url, httpx.AsyncClient(timeout=10) as http:
        missing = await http.post(
            f"{url}/mcp", json={}, headers={"Accept": "application/json, text/event-stream"}
        )
        refused = await http.post(f"{url}/mcp", json={}, headers={"Authorization": "Bearer not-a-jwt"})
        nested = await http.get(f"{url}/.well-known/oauth-protected-resource/mcp")
        bare = await http.get(f"{url}/.well-known/oauth-protected-resource")
    challenge = missing.headers["www-authenticate"]
    metadata_url = f"{url}/.well-known/oauth-protected-resource/mcp"
    assert missing.status_code == 401 and f'resource_metadata="{metadata_url}"' in challenge
    assert "error_description=" in challenge and "error=" not in challenge.replace("error_description", "")
    assert (
        missing.json()["resource_metadata"] == metadata_url
        and "bearer token" in missing.json()["error_description"]
    )
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert refused.json()["error"] == "invalid_token"
    assert nested.json() == bare.json()
    assert nested.json()["authorization_servers"] == [ISSUER + "/"]
    assert set(nested.json()["scopes_supported"]) == {"fs:read", "fs:write", "fs:admin"}

    async with (
        http_server(await backends.settings("sqlite-fs", **(AUTH | {"auth_issuer": None}))) as url,
        httpx.AsyncClient(timeout=10) as http,
    ):
        plain = await http.post(
            f"{url}/mcp", json={}, headers={"Accept": "application/json, text/event-stream"}
        )
        absent = await http.get(f"{url}/.well-known/oauth-protected-resource")
    assert plain.status_code == 401 and "resource_metadata" not in plain.headers["www-authenticate"]
    assert "bearer token" in plain.json()["error_description"] and absent.status_code == 404


async def test_the_readmes_first_tool_call_works(backends: Backends) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A first tool call", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    settings = await backends.settings("sqlite-fs")
    async with http_server(settings) as url:
        printed = io.StringIO()
        runnable = code.replace("http://127.0.0.1:8000", url)
        with contextlib.redirect_stdout(printed):
            await asyncio.to_thread(exec, compile(runnable, "README.md", "exec"), {"__name__": "readme"})
        async with Client(f"{url}/mcp") as c:
            read = await call(c, "read_content", book_id="python-book", path=README_LESSON)
    assert "'mode': 'created'" in printed.getvalue() and "# Install\n" in printed.getvalue()
    assert read["content"] == "# Install Python\n" and read["version"] == 2
