"""`FixedToolServer`: a FastMCP server whose tools, fixed once it starts, are found by name in
a table.

FastMCP finds a called tool by asking every provider at once (a task group and a task per
provider, then a walk over all components, visibility and auth checks): 48 us a look-up here,
and a trivial tool's whole `call_tool` went from 125-138 to 64-66 us without it (served, a
read or a write costs 0.15-0.2 ms less; docs/benchmarks.md). This server's tools are
registered before it starts and never change: none is added, removed, disabled or given its
own `auth` check later, and no session changes their visibility. So what FastMCP would find
for each name is found once, at start-up, and served from the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastmcp import FastMCP
from fastmcp.tools.base import Tool
from fastmcp.utilities.versions import VersionSpec


class FixedToolServer(FastMCP):
    """A FastMCP server that looks its tools up in a table made by `fix_tools`."""

    _fixed: dict[str, Tool] | None = None

    async def fix_tools(self, names: Sequence[str]) -> None:
        """Find each named tool as FastMCP does, once, and serve later look-ups of it from the
        table. A tool with its own `auth` check is left to FastMCP (the check depends on the
        caller)."""
        self._fixed = None  # so that the look-ups below are FastMCP's own
        fixed: dict[str, Tool] = {}
        for name in names:
            tool = await self.get_tool(name)
            if tool is not None and tool.auth is None:
                fixed[name] = tool
        self._fixed = fixed

    async def get_tool(self, name: str, version: VersionSpec | None = None) -> Tool | None:
        """The tool called `name` (the highest version unless `version` says otherwise), None if
        there is none; from the table for a fixed tool."""
        if version is None and self._fixed is not None:
            tool = self._fixed.get(name)
            if tool is not None:
                return tool
        return await super().get_tool(name, version)
