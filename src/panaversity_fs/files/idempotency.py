"""Idempotency keys for mutating tools.

A caller may pass `idempotency_key` to a mutation. The first call that commits under a key
stores its outcome in the same transaction as its journal change; every later call by the same
agent with the same key and the same arguments gets that outcome back and changes nothing (no
second journal change, no second audit entry), also when the calls run concurrently or reach
different replicas. The same key with different arguments is refused. A call that is refused
(CONFLICT, HASH_REQUIRED, ...) changes nothing and keeps no key, so a retry runs afresh. Keys
are scoped to the agent and forgotten after `idempotency_ttl`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from panaversity_fs.db import idempotency_sql as idem_sql
from panaversity_fs.db.engine import DB_ERRORS, Database, WriteTransaction, database_failure
from panaversity_fs.db.idempotency_sql import StoredCall
from panaversity_fs.errors import InvalidArgument, PanaversityFSError, Unavailable
from panaversity_fs.files.results import DeleteOutcome, WriteOutcome
from panaversity_fs.operation import Operation

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True, slots=True)
class Idempotency:
    """One call's claim on an idempotency key."""

    agent_id: str
    key: str
    tool: str
    fingerprint: str

    @classmethod
    def for_call(cls, op: Operation, arguments: Mapping[str, object]) -> Idempotency | None:
        """The claim of `op` on its `idempotency_key` (None when no key was given); `arguments`
        identify the request (the same key with other arguments is refused).

        Raises:
            InvalidArgument: the key is not 1-128 characters of `[A-Za-z0-9._:-]`.
        """
        key, tool = op.idempotency_key, op.name
        if key is None:
            return None
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InvalidArgument(
                "idempotency_key must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
                field="idempotency_key",
            )
        canonical = json.dumps(
            {"tool": tool, "arguments": dict(arguments)}, sort_keys=True, separators=(",", ":"), default=str
        )
        return cls(op.agent_id, key, tool, hashlib.sha256(canonical.encode()).hexdigest())

    def replay(self, stored: StoredCall) -> str | None:
        """The stored outcome to return for this call (None if the claim holds no outcome).

        Raises:
            InvalidArgument: the key was used for another tool or other arguments.
        """
        if (stored.tool, stored.fingerprint) != (self.tool, self.fingerprint):
            raise InvalidArgument(
                "this idempotency_key was already used for a different request; use a new key",
                field="idempotency_key",
                reused_key=True,
            )
        return stored.result


class Replay:
    """A committed outcome found under the call's key: return it, change nothing."""

    def __init__(self, payload: str) -> None:
        self.payload = payload

    def written(self) -> tuple[WriteOutcome, str | None]:
        """The stored write outcome and the content type it was stored with."""
        data = json.loads(self.payload)
        return WriteOutcome.model_validate(data["outcome"]), data.get("content_type")

    def deleted(self) -> DeleteOutcome:
        """The stored delete outcome."""
        return DeleteOutcome.model_validate(json.loads(self.payload)["outcome"])


def payload(outcome: WriteOutcome | DeleteOutcome, content_type: str | None = None) -> str:
    """What a committed call stores under its key."""
    return json.dumps({"outcome": outcome.model_dump(mode="json"), "content_type": content_type})


async def settle(
    tx: WriteTransaction,
    idem: Idempotency | None,
    decided: WriteOutcome | DeleteOutcome | PanaversityFSError,
    content_type: str | None = None,
) -> None:
    """In the mutation's transaction: release the key of a refused call (a retry may use it), or
    store the outcome of a successful one under it. Nothing without a key."""
    if idem is None:
        return
    if isinstance(decided, PanaversityFSError):
        await idem_sql.release(tx.conn, idem.agent_id, idem.key)
    else:
        await idem_sql.record(tx.conn, idem.agent_id, idem.key, payload(decided, content_type))


async def replayed(db: Database, idem: Idempotency | None) -> Replay | None:
    """The outcome an earlier call committed under `idem`'s key, if any (a cheap early look).

    Raises:
        InvalidArgument: the key was used for another request.
        Unavailable: the database failed.
    """
    if idem is None:
        return None
    try:
        async with db.read() as conn:
            stored = await idem_sql.find(conn, idem.agent_id, idem.key)
    except DB_ERRORS as exc:
        raise database_failure(exc) from None
    if stored is None:
        return None
    result = idem.replay(stored)
    return Replay(result) if result is not None else None


async def claim(tx: WriteTransaction, idem: Idempotency, now: datetime) -> Replay | None:
    """Claim the key inside the mutation's transaction; a committed holder's outcome if taken.

    Raises:
        InvalidArgument: the key was used for another request.
        Unavailable: the key is held without an outcome (cannot happen: outcomes are stored in
            the claiming transaction), so the caller should retry.
    """
    stored = await idem_sql.claim(tx.conn, idem.agent_id, idem.key, idem.tool, idem.fingerprint, now)
    if stored is None:
        return None
    result = idem.replay(stored)
    if result is None:
        raise Unavailable("the idempotency key is busy; retry")
    return Replay(result)


async def keep_result(db: Database, idem: Idempotency, result: str) -> str:
    """Store the result of a call that is not one journal change (a revert page) under its key,
    in a transaction of its own; return what the key holds (an earlier holder's result wins).

    Raises:
        InvalidArgument: the key was used for another request.
        Unavailable: the database failed, or the key is busy.
    """
    try:
        async with db.write() as tx:
            replay = await claim(tx, idem, datetime.now(UTC))
            if replay is not None:
                return replay.payload
            await idem_sql.record(tx.conn, idem.agent_id, idem.key, result)
    except DB_ERRORS as exc:
        raise database_failure(exc) from None
    return result
