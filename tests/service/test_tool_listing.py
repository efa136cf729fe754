"""`tools/list`: the published (dereferenced, compacted) schemas are made at start-up, once."""

from __future__ import annotations

from typing import Any

import pytest

from panaversity_fs.app.middleware import schemas
from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.support import client


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
