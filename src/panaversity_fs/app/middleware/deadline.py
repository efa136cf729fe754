"""`ApplyDeadlines`: the deadline of a call.

Read tools are cut off at it (`UNAVAILABLE`). A mutation is never cut off: the write engine
checks the deadline before its commit and gives up there, never after. Audit tools are exempt:
they report progress and take `max_entries`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastmcp.server.middleware import CallNext, MiddlewareContext

from panaversity_fs.app.middleware.calls import CallMiddleware, call_of
from panaversity_fs.auth.access import ADMIN, TOOL_RULES, WRITE
from panaversity_fs.config import Settings
from panaversity_fs.deadlines import deadline_scope
from panaversity_fs.errors import Unavailable


class ApplyDeadlines(CallMiddleware):
    """Gives each call `request_timeout` seconds."""

    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.request_timeout

    async def around(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        """Run the call within its deadline.

        Raises:
            Unavailable: a read tool ran past the deadline.
        """
        rule = TOOL_RULES.get(call_of(context.message).name)
        if rule is not None and rule.scope == ADMIN:
            return await call_next(context)
        with deadline_scope(self._timeout):
            if rule is not None and rule.scope == WRITE:
                return await call_next(context)
            timer = asyncio.timeout(self._timeout)
            try:
                async with timer:
                    return await call_next(context)
            except TimeoutError:
                if not timer.expired():
                    raise
                raise Unavailable(
                    f"the call did not finish within its {self._timeout:g} s deadline; retry",
                    retry_after=1.0,
                ) from None
