"""MCP tools: thin adapters that resolve the caller, call a service, return its result."""

from __future__ import annotations

from fastmcp import FastMCP

from panaversity_fs.resources import ServerState
from panaversity_fs.tools import content


def register_tools(mcp: FastMCP, state: ServerState) -> None:
    """Register every tool on `mcp` (explicitly; importing a module registers nothing)."""
    content.register(mcp, state)
