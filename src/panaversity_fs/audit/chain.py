"""Pure hash-chain logic: how an entry is hashed and how a sequence of entries is verified.

Entry hash = sha256 of the canonical JSON of every field of the entry, including its `seq` and
its predecessor's hash (`chain_prev_hash`). Canonical JSON: sorted keys, no whitespace, UTF-8,
times as integer microseconds since the epoch (UTC). Editing, deleting, inserting or reordering
any row therefore breaks the chain at that row; truncating the tail or re-hashing a whole suffix
is only detectable against the chain head row or an exported checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from panaversity_fs.times import epoch_micros

GENESIS_HASH = "0" * 64
"""`chain_prev_hash` of the first entry."""

HASHED_FIELDS = (
    "seq",
    "created_at",
    "agent_id",
    "operation",
    "book_id",
    "path",
    "user_id",
    "prev_hash",
    "new_hash",
    "status",
    "error_code",
    "error_message",
    "execution_time_ms",
    "request_id",
    "chain_prev_hash",
)
"""The columns an entry hash covers (every column but the hash itself)."""


def canonical_bytes(entry: Mapping[str, Any]) -> bytes:
    """Return the canonical serialisation of the hashed fields of `entry`."""
    payload: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = entry[name]
        if isinstance(value, datetime):
            value = epoch_micros(value)
        payload[name] = value
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_PREV_MARK = "chain-prev-hash-8d4e61f0c2a94b7f"
_SEQ_MARK = "seq-3b9f1c7e52d046a8"


def chain_template(entry: Mapping[str, Any]) -> tuple[bytes, bytes, bytes] | None:
    """`entry`'s canonical serialisation (`seq` and `chain_prev_hash` ignored) cut around those two
    values: `before + chain_prev_hash + between + str(seq) + after` is `canonical_bytes` of the
    entry placed there. The database fills them in when the chain head is known only to it (the
    one-statement commit, `db.commit_sql`). None if an argument happens to contain a marker."""
    rendered = canonical_bytes({**entry, "chain_prev_hash": _PREV_MARK, "seq": _SEQ_MARK})
    before, found, rest = rendered.partition(_PREV_MARK.encode())
    between, found_seq, after = rest.partition(f'"{_SEQ_MARK}"'.encode())
    if not found or not found_seq or _PREV_MARK.encode() in rest or _SEQ_MARK.encode() in after:
        return None
    return before, between, after


def compute_entry_hash(entry: Mapping[str, Any]) -> str:
    """Return the lowercase hex sha256 of `entry`'s canonical serialisation."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of verifying a chain.

    `first_bad_seq` is the position of the first entry that does not verify (or, for a
    truncated tail, the first missing position); None when the chain is intact. `last_hash` is
    the `entry_hash` at `head_seq` when the chain verified.
    """

    ok: bool
    entries_checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    last_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


async def verify_chain(
    entries: AsyncIterable[Mapping[str, Any]],
    head: tuple[int, str] | None,
    start: tuple[int, str] = (0, GENESIS_HASH),
) -> ChainReport:
    """Verify entries streamed in `seq` order against each other and the chain head.

    Args:
        entries: rows with every field of `HASHED_FIELDS` plus `entry_hash`, in seq order.
        head: the recorded chain head `(seq, head_hash)`, or None to skip that check.
        start: `(seq, entry_hash)` of the last trusted entry before the first one streamed.
    """
    expected_seq, expected_prev = start[0] + 1, start[1]
    checked = 0
    async for row in entries:
        seq = int(row["seq"])
        if seq != expected_seq:
            return ChainReport(False, checked, expected_seq - 1, expected_seq, "sequence gap")
        if row["chain_prev_hash"] != expected_prev:
            return ChainReport(False, checked, seq - 1, seq, "chain link broken")
        if compute_entry_hash(row) != row["entry_hash"]:
            return ChainReport(False, checked, seq - 1, seq, "entry content altered")
        checked += 1
        expected_prev = row["entry_hash"]
        expected_seq = seq + 1
    last_seq = expected_seq - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > last_seq:
            return ChainReport(False, checked, last_seq, last_seq + 1, "entries missing at tail")
        if head_seq < last_seq or head_hash != expected_prev:
            return ChainReport(False, checked, last_seq, head_seq + 1, "chain head mismatch")
    return ChainReport(True, checked, last_seq, last_hash=expected_prev)
