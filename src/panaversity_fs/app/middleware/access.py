"""`AuthorizeCalls`: the token's scope, user and book limits, checked before the tool runs.

A denial is audited (a read's in the batches, a mutation's in a transaction of its own), as
long as the agent is within its refusal budget; beyond it the call is `RATE_LIMITED` and
audited in the batches, so a token without scopes cannot flood the chain.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server.middleware import CallNext, MiddlewareContext

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.middleware.calls import CallMiddleware, call_of
from panaversity_fs.app.middleware.limits import LimitCalls
from panaversity_fs.app.resources import ServerState
from panaversity_fs.audit.trail import Subject
from panaversity_fs.auth.access import READ, TOOL_RULES, authorize
from panaversity_fs.errors import Forbidden


class AuthorizeCalls(CallMiddleware):
    """Refuses a call its caller's token does not allow."""

    def __init__(self, state: ServerState, limits: LimitCalls) -> None:
        self._state = state
        self._limits = limits

    async def around(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        """Check the caller may make this call, then make it.

        Raises:
            Forbidden: the token lacks the tool's scope or its user/book limits exclude the call.
            RateLimited: the agent was refused too often lately.
        """
        op = current_operation()
        arguments = call_of(context.message).arguments
        try:
            authorize(op.caller, op.name, arguments)
        except Forbidden as error:
            # Over the refusal budget: RATE_LIMITED, audited in the batches by `LimitCalls`.
            self._limits.rates.check(op.agent_id, "refusal")
            resources = self._state.resources
            if resources is not None:
                subject = Subject(arguments.get("book_id"), arguments.get("path"), arguments.get("user_id"))
                rule = TOOL_RULES.get(op.name)
                if rule is None or rule.scope == READ:
                    resources.trail.note(op, subject, error)
                else:
                    await resources.trail.refused(op, subject, error)
            raise
        return await call_next(context)
