"""What an agent pays on the wire: bytes per content byte, and the tool catalogue per scope.

    uv run python -m bench.bench_wire              # prints the tables, writes bench/results/wire-*.json

Serves `create_app` on a loopback port (SQLite + fs, auth on with HS256 test tokens) and talks
raw MCP over HTTP (the 2025-11-25 handshake, as the official SDK clients do), so every figure
is the exact bytes of an answer body:

- a 50,000-byte lesson read; a chapter page of 20 lessons of 5 KB; a book page of 12 lessons of
  100 KB; `delta_build` with content over those; `grep_search` with 28 matches in 14 files and
  with 160 matches in 2 files; an inline 200 KB PNG (`get_asset include_binary`);
- the catalogue a host sends the model (name + description + input schema, compact JSON) for
  each kind of token: admin, writer, reader, and a writer bound to one user;
- the same catalogue of the official MCP filesystem server (`@modelcontextprotocol/
  server-filesystem`, run with npx over stdio), the reference, measured in the same run.

Tokens are approximated as bytes / 4 (no tokenizer is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn

from bench.bench_core import RESULTS
from panaversity_fs.app.server import create_app
from panaversity_fs.config import Settings
from testkit.mcp_http import RawSession
from testkit.processes import free_port

SECRET = "bench-wire-" + "5f1e9c3a7b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f"
BOOK = "wire-book"
FILESYSTEM_SERVER = "@modelcontextprotocol/server-filesystem"
WORDS = ["agent", "book", "lesson", "python", "variable", "function", "the", "a", "of", "and", "to", "is"]


def lesson_text(size: int, seed: int) -> str:
    """Markdown-like text of `size` bytes: prose, headings, code with quotes."""
    rng = random.Random(seed)
    out: list[str] = []
    total = 0
    while total < size:
        roll = rng.random()
        if roll < 0.1:
            line = "## " + " ".join(rng.choice(WORDS) for _ in range(4)).title()
        elif roll < 0.2:
            line = '```python\nx = "value"  # a comment\nprint(x)\n```'
        else:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "."
        out.append(line)
        total += len(line) + 2
    return "\n\n".join(out)[:size]


def token(scope: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": f"bench-{scope.replace(':', '-').replace(' ', '-')}",
        "scope": scope,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(body | claims, SECRET, algorithm="HS256")


def catalogue(tools: list[dict[str, Any]]) -> dict[str, Any]:
    shown = [
        {"name": t["name"], "description": t.get("description"), "inputSchema": t["inputSchema"]}
        for t in tools
    ]
    size = len(json.dumps(shown, separators=(",", ":")))
    return {"tools": len(tools), "bytes": size, "tokens": size // 4}


async def measure_server(workdir: Path) -> dict[str, Any]:
    port = free_port()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/wire.db",
        storage_root=str(workdir / "data"),
        jwt_secret=SECRET,
        rate_limit_reads_per_minute=0,
        rate_limit_writes_per_minute=0,
        server_port=port,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    results: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            url = f"http://127.0.0.1:{port}/mcp"
            kinds = {
                "admin (fs:admin)": token("fs:admin"),
                "writer (fs:write)": token("fs:write"),
                "reader (fs:read)": token("fs:read"),
                "writer bound to a user": token("fs:write", user_id="alice"),
            }
            results["catalogue"] = {}
            for kind, bearer in kinds.items():
                wire = RawSession(http, url, bearer, name="wire")
                await wire.open()
                _, listed = await wire.rpc("tools/list", {})
                listed = listed["result"]
                results["catalogue"][kind] = catalogue(listed["tools"])
            wire = RawSession(http, url, kinds["admin (fs:admin)"], name="wire")
            await wire.open()
            results["answers"] = await measure_answers(wire)
    finally:
        server.should_exit = True
        await task
    return results


async def measure_answers(wire: RawSession) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat()
    lesson = lesson_text(50_000, 1)
    await wire.tool(
        "write_content", book_id=BOOK, path="content/01-Intro/01-Basics/01-lesson.md", content=lesson
    )
    chapter = {f"content/01-Intro/02-More/{n:02d}-lesson.md": lesson_text(5_000, n) for n in range(1, 21)}
    big = {f"content/02-Deep/01-Long/{n:02d}-lesson.md": lesson_text(100_000, 100 + n) for n in range(1, 13)}
    for path, text in (chapter | big).items():
        await wire.tool("write_content", book_id=BOOK, path=path, content=text)
    grep_files = {
        f"content/03-Grep/01-Few/{n:02d}-lesson.md": "intro\nneedle one here\nmore\nneedle two\n"
        for n in range(1, 15)
    }
    grep_dense = {
        f"content/03-Grep/02-Many/{n:02d}-lesson.md": "".join(
            f"haystack line {i} with a pin in it\n" for i in range(80)
        )
        for n in range(1, 3)
    }
    for path, text in (grep_files | grep_dense).items():
        await wire.tool("write_content", book_id=BOOK, path=path, content=text)
    image = b"\x89PNG\r\n\x1a\n" + random.Random(5).randbytes(200_000)
    await wire.tool(
        "upload_asset",
        book_id=BOOK,
        asset_type="images",
        filename="figure.png",
        binary_data=base64.b64encode(image).decode(),
    )
    answers: dict[str, Any] = {}
    size, _ = await wire.tool("read_content", book_id=BOOK, path="content/01-Intro/01-Basics/01-lesson.md")
    answers["50 KB lesson read"] = ratio(size, len(lesson.encode()))
    size, _ = await wire.tool("read_content", book_id=BOOK, scope="chapter", path="content/01-Intro/02-More")
    answers["chapter page, 20 lessons of 5 KB"] = ratio(size, sum(len(t.encode()) for t in chapter.values()))
    total, content, pages, cursor = 0, 0, 0, None
    while True:
        arguments: dict[str, Any] = {"book_id": BOOK, "scope": "part", "path": "content/02-Deep"}
        size, result = await wire.tool("read_content", **arguments, **({"cursor": cursor} if cursor else {}))
        total += size
        pages += 1
        content += sum(f["size"] for f in result["structuredContent"]["files"])
        cursor = result["structuredContent"].get("next_cursor")
        if cursor is None:
            break
    answers["part pages, 12 lessons of 100 KB"] = ratio(total, content) | {"pages": pages}
    size, result = await wire.tool("delta_build", book_id=BOOK, since=started, include_content=True, limit=25)
    sent = sum(f["size"] for f in result["structuredContent"]["changed_files"] if f["path"].endswith(".md"))
    answers["delta_build with content, one page"] = ratio(size, sent)
    for label, folder in (
        ("grep, 28 matches in 14 files", "content/03-Grep/01-Few/*"),
        ("grep, 160 matches in 2 files", "content/03-Grep/02-Many/*"),
    ):
        size, result = await wire.tool(
            "grep_search", book_id=BOOK, pattern="needle|pin", path_glob=folder, max_results=1000
        )
        matches = result["structuredContent"]["matches"]
        answers[label] = {"wire_bytes": size, "matches": matches, "bytes_per_match": round(size / matches, 1)}
    size, _ = await wire.tool("get_asset", book_id=BOOK, path="static/images/figure.png", include_binary=True)
    answers["inline 200 KB image"] = ratio(size, len(image))
    return answers


def ratio(wire_bytes: int, content_bytes: int) -> dict[str, Any]:
    return {
        "wire_bytes": wire_bytes,
        "content_bytes": content_bytes,
        "ratio": round(wire_bytes / content_bytes, 3),
    }


async def measure_filesystem_server(workdir: Path) -> dict[str, Any] | None:
    """The official filesystem server's catalogue, through npx over stdio; None without npx."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    npx = shutil.which("npx")
    if npx is None:
        return None
    params = StdioServerParameters(command=npx, args=["-y", FILESYSTEM_SERVER, str(workdir)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed.tools]
    return catalogue(tools)


def render(results: dict[str, Any]) -> str:
    rows = ["| answer | wire bytes | content bytes | wire / content |", "|---|---|---|---|"]
    for label, figure in results["answers"].items():
        if "bytes_per_match" in figure:
            rows.append(
                f"| {label} | {figure['wire_bytes']:,} | {figure['matches']} matches | {figure['bytes_per_match']} bytes/match |"
            )
        else:
            rows.append(
                f"| {label} | {figure['wire_bytes']:,} | {figure['content_bytes']:,} | {figure['ratio']:.3f}× |"
            )
    rows += ["", "| catalogue | tools | bytes | ~tokens (bytes/4) |", "|---|---|---|---|"]
    for kind, figure in results["catalogue"].items():
        rows.append(
            f"| PanaversityFS, {kind} | {figure['tools']} | {figure['bytes']:,} | {figure['tokens']:,} |"
        )
    reference = results.get("filesystem_server")
    if reference:
        rows.append(
            f"| official filesystem server (reference) | {reference['tools']} | {reference['bytes']:,} | {reference['tokens']:,} |"
        )
    return "\n".join(rows)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", type=Path, help="where to write the results (default: bench/results/wire-<time>.json)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the official filesystem server")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-wire-"))
    try:
        results = await measure_server(workdir)
        if not args.no_reference:
            results["filesystem_server"] = await measure_filesystem_server(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.json or RESULTS / f"wire-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
