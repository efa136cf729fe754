"""`FixedToolServer`: a called tool is found in the table made at start-up, and the table holds
exactly what FastMCP's own look-up finds."""

from __future__ import annotations

import pytest
from fastmcp import FastMCP
from fastmcp.server.providers.aggregate import AggregateProvider
from fastmcp.utilities.authorization import AuthContext
from fastmcp.utilities.versions import VersionSpec

from panaversity_fs.app.fixed_tools import FixedToolServer
from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.support import client


async def test_a_served_call_finds_its_tool_in_the_table(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[str] = []
    walk = AggregateProvider._get_tool  # pyright: ignore[reportPrivateUsage]

    async def counted(self: AggregateProvider, name: str, version: VersionSpec | None = None) -> object:
        walks.append(name)
        return await walk(self, name, version)

    mcp = create_server(settings)
    assert isinstance(mcp, FixedToolServer)
    async with client(mcp) as c:
        names = [tool.name for tool in await c.list_tools()]
        for name in names:  # the table holds what FastMCP's own look-up finds, for every tool
            fixed = await mcp.get_tool(name)
            found = await FastMCP.get_tool(mcp, name)
            assert fixed is not None and found is not None
            assert fixed.model_dump() == found.model_dump()
        monkeypatch.setattr(AggregateProvider, "_get_tool", counted)
        result = await c.call_tool("list_books", {})
        refused = await c.call_tool("no_such_tool", {}, raise_on_error=False)
    assert not result.is_error and refused.is_error
    assert walks == ["no_such_tool"]  # an unknown name still goes to FastMCP, and is refused


async def test_a_tool_with_its_own_auth_check_and_a_versioned_look_up_are_left_to_fastmcp() -> None:
    mcp = FixedToolServer("fixed")
    checked: list[str] = []

    def deny(ctx: AuthContext) -> bool:  # admits the look-up that fixes the tools, then no one
        checked.append(ctx.component.name)
        return len(checked) == 1

    @mcp.tool
    async def open_tool(n: int) -> int:  # pyright: ignore[reportUnusedFunction]
        return n

    @mcp.tool(auth=deny)
    async def guarded(n: int) -> int:  # pyright: ignore[reportUnusedFunction]
        return n

    @mcp.tool(version="2")
    async def versioned(n: int) -> int:  # pyright: ignore[reportUnusedFunction]
        return n

    await mcp.fix_tools(["open_tool", "guarded", "versioned", "missing"])
    assert set(mcp._fixed or {}) == {"open_tool", "versioned"}  # pyright: ignore[reportPrivateUsage]
    checks_while_fixing = len(checked)
    assert await mcp.get_tool("guarded") is None  # its check ran again for this look-up, and refused
    assert len(checked) > checks_while_fixing
    assert await mcp.get_tool("missing") is None
    assert await mcp.get_tool("versioned", VersionSpec(eq="1")) is None  # not the table's answer
    assert (await mcp.get_tool("versioned")) is (mcp._fixed or {})["versioned"]  # pyright: ignore[reportPrivateUsage]
