"""The deadline of the call being served (set by the call pipeline, read by the write engine).

Read tools are cut off at their deadline by the pipeline. A mutation is never cut off: it
checks `deadline_passed()` before its commit and gives up there (nothing written), and never
after, so a commit is never abandoned midway.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("pfs_deadline", default=None)


@contextmanager
def deadline_scope(seconds: float) -> Generator[None, None, None]:
    """Set the current call's deadline `seconds` from now (monotonic clock)."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline_passed() -> bool:
    """Whether the current call is past its deadline (False outside a call)."""
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() > deadline
