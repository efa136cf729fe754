"""`Operation`: one call being served, built once by whoever received it (the MCP middleware,
an HTTP route, the command line) and passed down to the services that do the work and audit it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

from panaversity_fs.identity import Caller


@dataclass(frozen=True, slots=True)
class Operation:
    """Who asked, for what, since when; the audit log's and the logs' view of one call."""

    caller: Caller
    name: str
    """What the audit log calls it: the tool's name, or `import`, `download_archive`, ..."""
    idempotency_key: object = None
    """The caller's `idempotency_key` argument, unchecked (mutations check it)."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Names the call in logs and in the audit log alike (JSON-RPC ids repeat across sessions)."""
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def begin(
        cls, caller: Caller, name: str, idempotency_key: object = None, request_id: str | None = None
    ) -> Operation:
        """The operation of a call starting now, under `request_id` when the call has one already."""
        if request_id is None:
            return cls(caller, name, idempotency_key)
        return cls(caller, name, idempotency_key, request_id)

    @property
    def agent_id(self) -> str:
        """The caller's agent id."""
        return self.caller.agent_id

    def named(self, name: str) -> Operation:
        """The same call under another name in the audit log (e.g. an upload's declaration)."""
        return replace(self, name=name)

    @property
    def elapsed_ms(self) -> int:
        """Milliseconds since the call started."""
        return int((time.perf_counter() - self.started) * 1000)
