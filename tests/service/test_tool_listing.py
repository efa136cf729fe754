"""`tools/list`: the published (dereferenced, compacted) schemas are made at start-up, once."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastmcp import FastMCP
from pydantic import Field

from panaversity_fs.app.middleware import schemas
from panaversity_fs.app.server import create_server, header_schemas
from panaversity_fs.config import Settings
from tests.support import client

LESSON = "content/01-Part/01-Chapter/01-lesson.md"


async def test_schemas_are_published_at_start_up_not_by_the_first_listing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    dereference = schemas.dereference_refs

    def counted(schema: dict[str, Any]) -> dict[str, Any]:
        made.append(str(schema.get("title", "")))
        return dereference(schema)

    monkeypatch.setattr(schemas, "dereference_refs", counted)
    async with client(create_server(settings)) as c:
        at_start = len(made)
        first = await c.list_tools()
        second = await c.list_tools()
    assert at_start >= len(first)  # every tool's input schema (and output schemas) made at start
    assert len(made) == at_start  # neither listing made any
    assert [t.model_dump() for t in first] == [t.model_dump() for t in second]
    assert all("$ref" not in str(tool.inputSchema) for tool in first)


async def test_published_output_schemas_are_lean_and_results_follow_them(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        tools = await c.list_tools()
        await c.call_tool("write_content", {"book_id": "lean-book", "path": LESSON, "content": "# hi"})
        plan = await c.call_tool("plan_build", {"book_id": "lean-book"})  # the client validates it
    outputs = [tool.output_schema for tool in tools if tool.output_schema]
    assert len(outputs) == len(tools)
    assert not [found for schema in outputs for found in wordy(schema)]
    assert not [tool.name for tool in tools if "anyOf" in (tool.output_schema or {})]  # one shape each
    assert plan.structured_content and plan.structured_content["total_files"] == 1


def wordy(schema: Any) -> list[Any]:
    """The titles and the `anyOf`s of bare types anywhere in `schema`."""
    if isinstance(schema, list):
        return [found for item in schema for found in wordy(item)]
    if not isinstance(schema, dict):
        return []
    found: list[Any] = [value for key, value in schema.items() if key == "title" and isinstance(value, str)]
    options = schema.get("anyOf", [])
    if options and all(isinstance(o, dict) and list(o) == ["type"] for o in options):
        found.append(options)
    return found + [found for value in schema.values() for found in wordy(value)]


async def test_the_sdk_checks_param_headers_only_against_tools_that_declare_one(settings: Settings) -> None:
    """A tool without an `x-mcp-header` property has nothing the SDK's `Mcp-Param-*` check could
    refuse, so its schema is not handed over (the check walked it on every call); one that
    declares a header keeps the check."""
    mcp = create_server(settings)
    async with client(mcp) as c:
        ours = [tool.name for tool in await c.list_tools()]
        lookup = getattr(mcp, "_mcp_server").get_tool_input_schema  # noqa: B009
        assert ours and all(lookup(name) is None for name in ours)
    routed = FastMCP("routed")

    @routed.tool
    async def by_region(
        region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], n: int
    ) -> int:
        return n

    plain = FastMCP("plain")

    @plain.tool
    async def add(n: int) -> int:
        return n

    tools = [*await routed.list_tools(run_middleware=False), *await plain.list_tools(run_middleware=False)]
    kept = header_schemas(tools)
    assert list(kept) == ["by_region"]
    assert kept["by_region"]["properties"]["region"]["x-mcp-header"] == "Region"
