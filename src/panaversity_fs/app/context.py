"""The operation of the tool call being served, as the call pipeline identified it."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar

from panaversity_fs.errors import Unauthenticated
from panaversity_fs.operation import Operation

_current: ContextVar[Operation | None] = ContextVar("pfs_operation", default=None)


@contextmanager
def operation_scope(op: Operation) -> Generator[None, None, None]:
    """Make `op` the current tool call's operation (the pipeline identifies the caller once)."""
    token = _current.set(op)
    try:
        yield
    finally:
        _current.reset(token)


def current_operation() -> Operation:
    """The operation of the tool call being served.

    Raises:
        Unauthenticated: no caller was identified (the call did not pass the pipeline).
    """
    op = _current.get()
    if op is None:
        raise Unauthenticated("no caller was identified for this call")
    return op
