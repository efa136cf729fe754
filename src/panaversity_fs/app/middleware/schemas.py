"""`DereferencedTools`: the tool schemas every `tools/list` sends, made once."""

from __future__ import annotations

from collections.abc import Sequence

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import Tool
from fastmcp.utilities.json_schema import dereference_refs
from mcp_types import ListToolsRequest


class DereferencedTools(Middleware):
    """Tool schemas with every `$ref` inlined (some clients cannot follow them), made once.

    FastMCP's own `DereferenceRefsMiddleware` re-walks every schema on every `tools/list`, and
    clients such as fastmcp's list the tools before calls: that walk was over a third of the
    server's CPU under load. Tools never change after start-up, so each is dereferenced once.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[str, int, int], Tool] = {}

    async def on_list_tools(
        self,
        context: MiddlewareContext[ListToolsRequest],
        call_next: CallNext[ListToolsRequest, Sequence[Tool]],
    ) -> Sequence[Tool]:
        """The tools, with dereferenced schemas."""
        return [self._dereferenced(tool) for tool in await call_next(context)]

    def _dereferenced(self, tool: Tool) -> Tool:
        key = (tool.name, id(tool.parameters), id(tool.output_schema))
        done = self._done.get(key)
        if done is None:
            updates: dict[str, object] = {"parameters": dereference_refs(tool.parameters)}
            if tool.output_schema is not None:
                updates["output_schema"] = dereference_refs(tool.output_schema)
            done = self._done[key] = tool.model_copy(update=updates)
        return done
