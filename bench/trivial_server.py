"""The baseline: a FastMCP server with one trivial tool, served like PanaversityFS.

Same stack as `panaversity-fs serve`: `http_app(path="/mcp")` (streamable HTTP, stateful,
host/origin protection on) under uvicorn with the same options, the SDK's input-schema lookup
set the same way, and a `/health` route. Only
the tools differ, and they touch nothing: `echo(text)` returns a dict; `give(size)` answers
`size` bytes of text with a small structured result (the shape of a read); `take(text)` accepts
a text and answers its size (the shape of a write). `give` and `take` are the payload-matched
baselines a read and a write of the same size are compared with.

    python -m bench.trivial_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from mcp_types import TextContent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from panaversity_fs.app.server import header_schemas


def build() -> FastMCP:
    """The trivial server."""
    mcp = FastMCP("trivial-echo", mask_error_details=True, on_duplicate="error")

    @mcp.tool
    async def echo(text: str) -> dict:  # pyright: ignore[reportUnusedFunction]
        """Return `text` unchanged."""
        return {"text": text}

    @mcp.tool
    async def give(size: int) -> ToolResult:  # pyright: ignore[reportUnusedFunction]
        """Return `size` bytes of text and a structured result naming the size."""
        return ToolResult(
            content=[TextContent(type="text", text=_text(size))], structured_content={"size": size}
        )

    @mcp.tool
    async def take(text: str) -> dict:  # pyright: ignore[reportUnusedFunction]
        """Accept `text`; return its size in bytes."""
        return {"size": len(text.encode())}

    @mcp.custom_route("/health", methods=["GET"])
    async def health(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse({"status": "ok"})

    return mcp


def _text(size: int) -> str:
    line = "Variables name values; a name is bound with `=` and can be bound again later.\n"
    return (line * (size // len(line) + 1))[:size]


def main() -> None:
    """Serve the trivial server on 127.0.0.1:PORT until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    mcp = build()
    # As `panaversity-fs serve` does (app/server.py): the SDK looks each called tool's input
    # schema up by name instead of running a whole `tools/list` before every `tools/call`
    # (without it this server spent about a quarter of its CPU per call on that listing), and
    # finds none where no tool declares an `Mcp-Param-*` header.
    schemas = header_schemas(asyncio.run(mcp.list_tools(run_middleware=False)))
    getattr(mcp, "_mcp_server").get_tool_input_schema = schemas.get  # noqa: B009 - no public setter
    app = mcp.http_app(path="/mcp", host_origin_protection=True)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
