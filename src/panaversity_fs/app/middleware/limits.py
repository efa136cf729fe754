"""`LimitCalls`: each agent's rate budget, then a slot among the calls running at once.

Calls refused by a limit are audited in the read batches: appending each under the chain lock
would let a flood of refused calls load the database it is being kept away from.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server.middleware import CallNext, MiddlewareContext

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.middleware.calls import CallMiddleware, call_of
from panaversity_fs.app.resources import ServerState
from panaversity_fs.audit.trail import Subject
from panaversity_fs.auth.access import TOOL_RULES, WRITE
from panaversity_fs.config import Settings
from panaversity_fs.errors import PanaversityFSError, RateLimited, Unavailable
from panaversity_fs.limits import LoadShedder, RateLimiter
from panaversity_fs.operation import Operation


class LimitCalls(CallMiddleware):
    """Per-agent read/write budgets (checked before authorisation: refused calls spend them too)
    and load shedding beyond the calls allowed to run and wait."""

    def __init__(self, state: ServerState, settings: Settings) -> None:
        self._state = state
        self.rates = RateLimiter(
            settings.rate_limit_reads_per_minute,
            settings.rate_limit_writes_per_minute,
            settings.rate_limit_burst,
            refusals_per_minute=settings.refusals_per_minute,
        )
        self._shedder = LoadShedder(
            settings.max_concurrent_calls, settings.max_waiting_calls, settings.max_call_wait
        )

    @property
    def load(self) -> tuple[int, int]:
        """Tool calls running and waiting for a slot right now."""
        return self._shedder.running, self._shedder.waiting

    async def around(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        """Spend one call of the agent's budget, hold a slot, run the call.

        Raises:
            RateLimited: the agent is over its budget (audited, batched).
            Unavailable: no slot freed up in time (`overloaded`; audited, batched).
        """
        op = current_operation()
        rule = TOOL_RULES.get(op.name)
        arguments = call_of(context.message).arguments
        try:
            self.rates.check(op.agent_id, "write" if rule is not None and rule.scope == WRITE else "read")
            async with self._shedder.slot():
                return await call_next(context)
        except (RateLimited, Unavailable) as error:
            if isinstance(error, RateLimited) or error.details.get("overloaded"):
                self.note_refusal(op, arguments, error)
            raise

    def note_refusal(self, op: Operation, arguments: dict[str, Any], error: PanaversityFSError) -> None:
        """Audit (batched) and count a call a limit refused."""
        resources = self._state.resources
        if resources is None:
            return
        book = arguments.get("book_id")
        subject = Subject(book if book is not None else "*", arguments.get("path"), arguments.get("user_id"))
        resources.trail.note(op, subject, error)
        resources.metrics.limited_total.labels("rate" if isinstance(error, RateLimited) else "overload").inc()
