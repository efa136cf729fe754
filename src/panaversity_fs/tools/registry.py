"""Registers every tool, the lesson resource, completions and the prompt on the server."""

from __future__ import annotations

from fastmcp import FastMCP

from panaversity_fs.app.resources import ServerState
from panaversity_fs.tools import archive, assets, audit, books, builds, content, history, resources, search


def register_tools(mcp: FastMCP, state: ServerState) -> None:
    """Register every tool, the lesson resource, completions and the prompt on `mcp` (explicitly; importing a module registers nothing)."""
    content.register(mcp, state)
    books.register(mcp, state)
    search.register(mcp, state)
    builds.register(mcp, state)
    archive.register(mcp, state)
    assets.register(mcp, state)
    audit.register(mcp, state)
    history.register(mcp, state)
    resources.register(mcp, state)
