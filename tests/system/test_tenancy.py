"""S-4 tenancy matrix: two users x two books x every tool, with auth on (and the same for reads
with auth off, where `user_id` alone separates overlays).

Alice and Bob each have a private overlay in both books. Bob's tokens (one bound to his user,
one also limited to book 1) call every tool `tools/list` shows, on both books, as himself, as
nobody and as Alice, and download every archive he is given. Across all those answers, error
texts included, nothing of Alice's may appear (her content, her hashes), nothing of book 2 may
reach the book-1 token, and every attempt to act as Alice or outside the book limit is a
`FORBIDDEN` that names the limit. A tool missing from the matrix fails the test.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation

from testkit.processes import ServerProcess
from tests.auth_support import HS_ENV, hs_token
from tests.conftest import PAIRS, Backends
from tests.support import with_content

BOOKS = ("tenant-one", "tenant-two")
LESSON = "content/01-Part/01-Chapter/01-lesson.md"
SECOND = "content/01-Part/01-Chapter/02-lesson.md"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
USERS = (None, "bob", "alice")

Args = Callable[[str, str | None, dict[str, Any]], list[dict[str, Any]]]


def _with_user(args: dict[str, Any], user: str | None) -> dict[str, Any]:
    return args | ({"user_id": user} if user is not None else {})


MATRIX: dict[str, Args] = {
    "read_content": lambda b, u, k: [
        _with_user({"book_id": b, "path": LESSON}, u),
        _with_user({"book_id": b, "scope": "book"}, u),
        _with_user({"book_id": b, "path": "content/01-Part", "scope": "part"}, u),
    ],
    "write_content": lambda b, u, k: [
        _with_user({"book_id": b, "path": SECOND, "content": f"# {u} again\n"}, u),
        _with_user({"book_id": b, "path": LESSON, "content": "x", "expected_hash": k["alice"][b]}, u),
    ],
    "delete_content": lambda b, u, k: [
        _with_user({"book_id": b, "path": LESSON, "expected_hash": k["alice"][b]}, u),
    ],
    "list_books": lambda b, u, k: [{"book_id": b, "include_structure": True}, {"include_structure": True}],
    "validate_book": lambda b, u, k: [{"book_id": b}],
    "glob_search": lambda b, u, k: [
        _with_user({"book_id": b, "pattern": "**"}, u),
        _with_user({"pattern": "**", "all_books": True}, u),
    ],
    "grep_search": lambda b, u, k: [
        _with_user({"book_id": b, "pattern": "PRIVATE|lesson"}, u),
        _with_user({"pattern": "PRIVATE", "all_books": True}, u),
    ],
    "plan_build": lambda b, u, k: [{"book_id": b}],
    "delta_build": lambda b, u, k: [
        _with_user({"book_id": b, "since": "2020-01-01T00:00:00Z", "include_content": True}, u)
    ],
    "get_book_archive": lambda b, u, k: [_with_user({"book_id": b, "scope": "all"}, u)],
    "upload_asset": lambda b, u, k: [
        {
            "book_id": b,
            "asset_type": "img",
            "filename": "bob.png",
            "binary_data": base64.b64encode(PNG).decode(),
        }
    ],
    "complete_asset_upload": lambda b, u, k: [{"upload_id": "not-an-upload"}],
    "get_asset": lambda b, u, k: [{"book_id": b, "path": "static/img/shared.png", "include_binary": True}],
    "list_assets": lambda b, u, k: [{"book_id": b}],
    "delete_asset": lambda b, u, k: [{"book_id": b, "path": "static/img/shared.png"}],
    "query_audit": lambda b, u, k: [_with_user({"book_id": b}, u), {}],
    "verify_audit": lambda b, u, k: [{}],
    "list_versions": lambda b, u, k: [_with_user({"book_id": b, "path": LESSON}, u)],
    "diff_content": lambda b, u, k: [
        _with_user({"book_id": b, "path": LESSON, "against_base": u is not None}, u),
    ],
    "restore_version": lambda b, u, k: [_with_user({"book_id": b, "path": LESSON, "version": 1}, u)],
    "revert_changes": lambda b, u, k: [
        {"agent_id": "seed-admin", "since": "2020-01-01T00:00:00Z", "book_id": b}
    ],
}


async def seed(c: Client[Any]) -> dict[str, dict[str, str]]:
    """Base lessons and an asset in both books, and Alice's and Bob's overlays; their hashes."""
    hashes: dict[str, dict[str, str]] = {"alice": {}, "bob": {}, "base": {}}
    for book in BOOKS:
        marker = book.upper()
        base = await c.call_tool(
            "write_content", {"book_id": book, "path": LESSON, "content": f"# {marker}-BASE\n"}
        )
        hashes["base"][book] = base.structured_content["file_hash"]  # type: ignore[index]
        await c.call_tool(
            "upload_asset",
            {
                "book_id": book,
                "asset_type": "img",
                "filename": "shared.png",
                "binary_data": base64.b64encode(PNG).decode(),
            },
        )
        for user in ("alice", "bob"):
            made = await c.call_tool(
                "write_content",
                {
                    "book_id": book,
                    "path": LESSON,
                    "content": f"# {user.upper()}-PRIVATE-{marker}\n",
                    "user_id": user,
                    "expected_hash": hashes["base"][book],
                },
            )
            hashes[user][book] = made.structured_content["file_hash"]  # type: ignore[index]
    return hashes


async def sweep(
    c: Client[Any], hashes: dict[str, dict[str, str]], tools: list[str]
) -> list[tuple[str, str, str | None, str, dict[str, Any]]]:
    """Every matrix call: (tool, book, user, answer text, parsed answer)."""
    answers: list[tuple[str, str, str | None, str, dict[str, Any]]] = []
    missing = set(tools) - set(MATRIX)
    assert not missing, f"tools without a tenancy matrix entry: {missing}"
    async with httpx.AsyncClient(timeout=30) as http:
        for tool in tools:
            for book in BOOKS:
                for user in USERS:
                    for args in MATRIX[tool](book, user, hashes):
                        result = await c.call_tool(tool, args, raise_on_error=False)
                        if result.is_error:
                            text = result.content[0].text  # type: ignore[union-attr]
                            parsed = json.loads(text)
                        else:
                            parsed, text = answer_of(result)
                            if tool == "get_book_archive":
                                text += await archive_text(http, parsed["url"])
                        answers.append((tool, book, user if "user_id" in args else None, text, parsed))
    return answers


def answer_of(result: Any) -> tuple[dict[str, Any], str]:
    """A successful call's structured result (with its content, see `with_content`) and all
    the text it sent: the structured JSON and every content block."""
    blocks = [block.model_dump_json() for block in result.content]
    return with_content(result), json.dumps(result.structured_content) + "".join(blocks)


async def archive_text(http: httpx.AsyncClient, url: str) -> str:
    """Every member name and member body of a downloaded archive, as text."""
    response = await http.get(url)
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return "".join(name + archive.read(name).decode("latin-1") for name in archive.namelist())


def assert_no_trace_of(
    answers: list[tuple[str, str, str | None, str, dict[str, Any]]], secrets: list[str]
) -> None:
    for tool, book, user, text, _ in answers:
        for secret in secrets:
            assert secret not in text, (tool, book, user, secret, text[:400])


@pytest.mark.parametrize("combo", PAIRS)
async def test_s4_bobs_tokens_never_see_alice_or_a_book_beyond_their_limit(
    backends: Backends, tmp_path: Path, combo: str
) -> None:
    settings = await backends.settings(combo)
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        url = f"{server.url}/mcp"
        async with Client(url, auth=hs_token("seed-admin")) as admin:
            hashes = await seed(admin)
            tools = sorted(tool.name for tool in await admin.list_tools())
        alice_secrets = ["ALICE-PRIVATE", *hashes["alice"].values()]

        async with Client(url, auth=hs_token("bob-agent", user_id="bob")) as bob:
            answers = await sweep(bob, hashes, tools)
        assert_no_trace_of(answers, alice_secrets)
        for tool, _book, user, _, parsed in answers:
            if user == "alice":
                assert parsed.get("error") == "FORBIDDEN" and parsed.get("limit") == "user_id", (tool, parsed)
        own = [p for t, b, u, _, p in answers if t == "read_content" and u == "bob" and "content" in p]
        assert {p["content"] for p in own} == {f"# BOB-PRIVATE-{b.upper()}\n" for b in BOOKS}
        called = {tool for tool, *_ in answers}
        assert called == set(tools)
        archives = [p for t, _, _, _, p in answers if t == "get_book_archive" and "url" in p]
        assert len(archives) == 4  # base and Bob's view of each book, each downloaded and searched
        hits = [p for t, _, u, _, p in answers if t == "grep_search" and u == "bob" and p.get("matches")]
        assert hits, "Bob's own overlay must be searchable"

        async with Client(url, auth=hs_token("bob-shelf", user_id="bob", books=[BOOKS[0]])) as shelf:
            answers = await sweep(shelf, hashes, tools)
        assert_no_trace_of(
            answers, [*alice_secrets, "TENANT-TWO", hashes["base"][BOOKS[1]], hashes["bob"][BOOKS[1]]]
        )
        for tool, book, _, _, parsed in answers:
            if book == BOOKS[1] and parsed.get("error") is None:
                # Only calls that name no book of their own (refused anyway, or book-less) may pass.
                assert tool in {"complete_asset_upload"}, (tool, parsed)
        limits = {
            p.get("limit") for t, b, _, _, p in answers if b == BOOKS[1] and p.get("error") == "FORBIDDEN"
        }
        assert "books" in limits


async def test_s4_with_auth_off_user_id_alone_keeps_overlays_apart(
    backends: Backends, tmp_path: Path
) -> None:
    """Local mode: no tokens, so any agent may name any user; what `user_id=bob` returns must
    still hold nothing of Alice's, whichever read tool returns it (archives included)."""
    settings = await backends.settings("sqlite-fs")
    reads = ["read_content", "glob_search", "grep_search", "delta_build", "get_book_archive"]
    with ServerProcess(settings, tmp_path / "server.log") as server:
        url = f"{server.url}/mcp"
        async with Client(url, client_info=Implementation(name="seed-admin", version="1")) as admin:
            hashes = await seed(admin)
            assert set(reads) <= {tool.name for tool in await admin.list_tools()}
        answers = []
        async with (
            Client(url, client_info=Implementation(name="bob-agent", version="1")) as bob,
            httpx.AsyncClient(timeout=30) as http,
        ):
            for tool in reads:
                for book in BOOKS:
                    for args in MATRIX[tool](book, "bob", hashes):
                        result = await bob.call_tool(tool, args, raise_on_error=False)
                        assert not result.is_error, (tool, args, result.content)
                        parsed, text = answer_of(result)
                        if tool == "get_book_archive":
                            text += await archive_text(http, parsed["url"])
                        answers.append((tool, book, "bob", text, parsed))
    assert_no_trace_of(answers, ["ALICE-PRIVATE", *hashes["alice"].values()])
    assert sum("BOB-PRIVATE" in text for *_, text, _ in answers) >= 8
