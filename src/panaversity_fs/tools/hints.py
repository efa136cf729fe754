"""The MCP behaviour hints every tool is registered with, one per kind of tool."""

from __future__ import annotations

from mcp_types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
"""Reads: change nothing a caller can see (they are audited). No destructive hint: MCP gives it
meaning only for tools that are not read-only."""

WRITES = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)
"""Writes and uploads: replace content; repeating one without an idempotency key writes again."""

DELETES = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)
"""Deletes: remove content; repeating one changes nothing more."""

RECORDS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
"""`plan_build`: stores a manifest snapshot, destroys nothing, same answer when repeated."""
