"""The caller's identity, resolved in exactly one place.

With auth off, the agent id is the client name the MCP client sent (`clientInfo` at
`initialize`, or the client-info metadata newer protocol versions carry on each request).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmcp import Context

from panaversity_fs.errors import Unauthenticated

MAX_AGENT_ID = 255
RESERVED_AGENT_IDS = frozenset({"system", "unknown", "anonymous"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The agent behind one request."""

    agent_id: str
    request_id: str | None = None


def check_agent_id(agent_id: object) -> str:
    """Return `agent_id` if it can stand in the audit log.

    Raises:
        Unauthenticated: it is missing, empty, reserved (`system`, ...), over-long, or holds
            control characters.
    """
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise Unauthenticated("no agent identity: send a client name (clientInfo.name)")
    if agent_id.strip().lower() in RESERVED_AGENT_IDS:
        raise Unauthenticated(f"agent id {agent_id.strip()!r} is reserved; identify your agent")
    if len(agent_id) > MAX_AGENT_ID or any(ord(c) < 0x20 or ord(c) == 0x7F for c in agent_id):
        raise Unauthenticated("agent id must be at most 255 printable characters")
    return agent_id


def caller_from_context(ctx: Context) -> Caller:
    """Return the caller of the current MCP request.

    Raises:
        Unauthenticated: the request carries no usable identity.
    """
    name: str | None = None
    try:
        params = ctx.session.client_params
    except RuntimeError:
        params = None
    if params is not None:
        name = params.client_info.name
    request_id: str | None
    try:
        request_id = ctx.request_id
    except RuntimeError:
        request_id = None
    return Caller(agent_id=check_agent_id(name), request_id=request_id)
