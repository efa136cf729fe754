"""Work a call leaves until its answer has been sent.

A write is done once its commit returns: publishing its bytes afterwards (a rename, and on
PostgreSQL a short transaction) is tidying up that readers and recovery already cover, since
readers follow a pending row's staging key and recovery publishes whatever a writer left. An
HTTP request served inside `deferring` runs such work after its handler returned, i.e. after
the last byte of its response left (an ASGI application returns only once it has sent its
response), so the agent reads its answer while the server tidies up. Anywhere else (in-process
clients, the command line, a handler running in a stateful session's own task, work queued
while deferred work runs) the work runs at once, where it is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

logger = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]


class _Deferred:
    """The work one request deferred, and whether the request is still being answered."""

    __slots__ = ("open", "work")

    def __init__(self) -> None:
        self.work: list[Work] = []
        self.open = True


_current: ContextVar[_Deferred | None] = ContextVar("panaversity_fs_after_response", default=None)


async def after_response(work: Work) -> None:
    """Run `work` once the current request's response has been sent, or now if there is none.

    Deferred work must handle its own failures: one that raises is logged and the rest still
    runs. Work run now propagates what it raises.
    """
    deferred = _current.get()
    if deferred is None or not deferred.open:
        await work()
        return
    deferred.work.append(work)


@asynccontextmanager
async def deferring() -> AsyncGenerator[None]:
    """Collect the work `after_response` is given inside (tasks started inside included), and
    run it, in order, on leaving, however the body ended. A cancellation stops it: whatever
    was left is what recovery finishes for a writer that crashed."""
    deferred = _Deferred()
    token = _current.set(deferred)
    try:
        yield
    finally:
        deferred.open = False
        _current.reset(token)
        for work in deferred.work:
            try:
                await work()
            except Exception:
                logger.exception("work deferred until after a response failed")
