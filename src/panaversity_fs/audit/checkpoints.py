"""Signed checkpoints of the audit chain head, kept outside the database.

The hash chain exposes an edited, deleted, inserted or reordered entry, but whoever can write
the database can also cut the tail off, or rewrite a whole suffix and the head row with it,
and the chain still verifies. A checkpoint records `(seq, head_hash)` at one moment, signed
with a key the database never holds, in storage under `.pfs/checkpoints/` and in the log. While
one checkpoint survives, no entry up to its seq can be removed or rewritten without
`check_against` noticing: the stored entry at that seq would no longer hash to the checkpoint.

Not detectable: changes after the newest surviving checkpoint (bounded by the checkpoint
interval), and anything by someone who holds the signing key and can write both stores.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql
from panaversity_fs.storage.blobs import INTERNAL_PREFIX, BlobNotFound, BlobStore

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = f"{INTERNAL_PREFIX}checkpoints/"


class CheckpointError(ValueError):
    """A checkpoint document is malformed."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain head at one moment: `seq`, the `entry_hash` at that seq, when, and a signature."""

    seq: int
    head_hash: str
    created_at: str
    key_id: str | None = None
    signature: str | None = None

    @property
    def storage_key(self) -> str:
        """Where the checkpoint lives in storage (names sort in seq order)."""
        return checkpoint_key(self.seq)

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers (everything but the signature)."""
        body = {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "created_at": self.created_at,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        """The checkpoint as one line of JSON (what `parse` reads back)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | bytes) -> Checkpoint:
        """Read a checkpoint document.

        Raises:
            CheckpointError: not a JSON object with an integer `seq` >= 1, a 64-hex `head_hash`
                and a `created_at` string.
        """
        try:
            data: object = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError("a checkpoint is a JSON object") from None
        if not isinstance(data, dict):
            raise CheckpointError("a checkpoint is a JSON object")
        fields = cast(dict[str, Any], data)
        seq, head_hash, created = fields.get("seq"), fields.get("head_hash"), fields.get("created_at")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise CheckpointError("checkpoint seq must be a positive integer")
        if not isinstance(head_hash, str) or len(head_hash) != 64 or head_hash.strip("0123456789abcdef"):
            raise CheckpointError("checkpoint head_hash must be 64 lowercase hex characters")
        if not isinstance(created, str):
            raise CheckpointError("checkpoint created_at must be a string")
        key_id, signature = fields.get("key_id"), fields.get("signature")
        return cls(
            seq,
            head_hash,
            created,
            key_id if isinstance(key_id, str) else None,
            signature if isinstance(signature, str) else None,
        )


def checkpoint_key(seq: int) -> str:
    """The storage key of the checkpoint at `seq`."""
    return f"{CHECKPOINT_PREFIX}{seq:020d}.json"


def _seq_of(key: str) -> int | None:
    name = key.removeprefix(CHECKPOINT_PREFIX).removesuffix(".json")
    return int(name) if key.startswith(CHECKPOINT_PREFIX) and name.isdigit() else None


class CheckpointSigner:
    """Signs checkpoints with an HMAC-SHA256 key and tells valid, foreign and forged ones apart."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self.key_id = hashlib.sha256(b"key-id\0" + key).hexdigest()[:16] if key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointSigner:
        """The configured checkpoint key (its length is checked by `Settings`), else one derived
        from the URL signing secret, else none."""
        if settings.audit_checkpoint_secret is not None:
            secret = settings.audit_checkpoint_secret.get_secret_value().encode()
            return cls(hashlib.sha256(b"panaversity-fs audit checkpoint\0" + secret).digest())
        if settings.url_signing_secret is not None:
            secret = settings.url_signing_secret.get_secret_value().encode()
            return cls(hashlib.sha256(b"panaversity-fs audit checkpoint (url key)\0" + secret).digest())
        return cls(None)

    @property
    def signs(self) -> bool:
        """Whether checkpoints made here carry a signature."""
        return self._key is not None

    def make(self, seq: int, head_hash: str, now: datetime | None = None) -> Checkpoint:
        """A checkpoint of `(seq, head_hash)`, signed when a key is configured."""
        created = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
        unsigned = Checkpoint(seq, head_hash, created, self.key_id)
        if self._key is None:
            return unsigned
        return Checkpoint(seq, head_hash, created, self.key_id, self._mac(unsigned))

    def judge(self, checkpoint: Checkpoint) -> str:
        """`valid`, `unsigned`, `foreign` (another key signed it) or `forged` (bad signature)."""
        if checkpoint.signature is None:
            return "unsigned"
        if self._key is None or checkpoint.key_id != self.key_id:
            return "foreign"
        valid = hmac.compare_digest(checkpoint.signature.encode(), self._mac(checkpoint).encode())
        return "valid" if valid else "forged"

    def _mac(self, checkpoint: Checkpoint) -> str:
        assert self._key is not None
        return hmac.new(self._key, checkpoint.signed_bytes(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    """How the chain in the database compares with checkpoints.

    `verified_seq` is the newest checkpoint the database still matches. On a mismatch,
    `first_bad_seq` is the earliest entry that may be missing or rewritten (just after the
    newest checkpoint that still matches), `missing_from` the first position a truncated chain
    certainly lacks, and `checkpoint_seq` the checkpoint that exposed it. `ignored` counts
    checkpoints passed over: unsigned ones while a key is configured, or ones signed with
    another key (e.g. before a key rotation).
    """

    ok: bool
    checkpoints: int
    verified_seq: int | None = None
    first_bad_seq: int | None = None
    missing_from: int | None = None
    checkpoint_seq: int | None = None
    reason: str | None = None
    ignored: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


Fetch = Callable[[int], Awaitable[Checkpoint | None]]


async def check_against(
    conn: AsyncConnection,
    seqs: Sequence[int],
    fetch: Fetch,
    signer: CheckpointSigner,
    trusted: bool = False,
) -> CheckpointReport:
    """Compare the chain with the checkpoints at `seqs`, reading as few of them as it can.

    The newest checkpoint is read first: if the entry at its seq still has its hash, every
    entry up to it is as it was (each entry's hash covers its predecessor's). Otherwise the
    checkpoints are bisected for the newest one that still matches. Checkpoints signed with
    another key, or unsigned ones, are passed over unless `trusted` (files an operator kept);
    a bad signature under our own key is itself reported as tampering.
    """
    ordered = sorted(set(seqs))
    head_seq = (await audit_sql.chain_head(conn))[0]
    cache: dict[int, Checkpoint | None] = {}
    forged: list[int] = []
    ignored: list[int] = []

    async def usable(index: int) -> Checkpoint | None:
        seq = ordered[index]
        if seq not in cache:
            checkpoint = await fetch(seq)
            verdict = signer.judge(checkpoint) if checkpoint is not None else "missing"
            if verdict == "forged":
                forged.append(seq)
            keep = verdict == "valid" or (verdict in ("unsigned", "foreign") and trusted)
            keep = keep or (verdict == "unsigned" and not signer.signs)
            if checkpoint is not None and not keep and verdict != "forged":
                ignored.append(seq)
            cache[seq] = checkpoint if keep else None
        return cache[seq]

    async def matches(checkpoint: Checkpoint) -> bool:
        return (
            checkpoint.seq <= head_seq
            and await audit_sql.entry_hash_at(conn, checkpoint.seq) == checkpoint.head_hash
        )

    newest = len(ordered) - 1
    while newest >= 0 and await usable(newest) is None:
        newest -= 1
    if forged:
        return _forged(len(ordered), forged)
    if newest < 0:
        return CheckpointReport(True, len(ordered), ignored=len(ignored))
    latest = cache[ordered[newest]]
    assert latest is not None
    if await matches(latest):
        return CheckpointReport(True, len(ordered), verified_seq=latest.seq, ignored=len(ignored))
    # Bisect: a rewrite from position k breaks every checkpoint at or after k and none before.
    low, bad, last_good = -1, newest, 0
    while bad - low > 1:
        probe = (low + bad) // 2
        middle = probe
        while probe > low and await usable(probe) is None:
            probe -= 1
        if probe == low:
            low = middle  # nothing usable in (low, middle]
            continue
        checkpoint = cache[ordered[probe]]
        assert checkpoint is not None
        if await matches(checkpoint):
            low, last_good = probe, checkpoint.seq
        else:
            bad = probe
    if forged:
        return _forged(len(ordered), forged)
    exposing = cache[ordered[bad]]
    assert exposing is not None
    if exposing.seq > head_seq:
        return CheckpointReport(
            False,
            len(ordered),
            verified_seq=last_good or None,
            first_bad_seq=last_good + 1,
            missing_from=head_seq + 1,
            checkpoint_seq=exposing.seq,
            reason=f"entries missing: the chain ends at seq {head_seq} but checkpoint {exposing.seq} "
            f"covers more (tail truncated; entries after seq {last_good} are unconfirmed)",
            ignored=len(ignored),
        )
    return CheckpointReport(
        False,
        len(ordered),
        verified_seq=last_good or None,
        first_bad_seq=last_good + 1,
        checkpoint_seq=exposing.seq,
        reason=f"entry {exposing.seq} no longer matches its checkpoint: entries after seq {last_good} "
        "were rewritten",
        ignored=len(ignored),
    )


def _forged(count: int, forged: list[int]) -> CheckpointReport:
    return CheckpointReport(
        False,
        count,
        checkpoint_seq=min(forged),
        reason=f"checkpoint {min(forged)} has a bad signature (the checkpoint store was tampered with)",
    )


class CheckpointStore:
    """The checkpoints in storage: write, list, read, prune."""

    def __init__(self, store: BlobStore, signer: CheckpointSigner, kept: int) -> None:
        self._store = store
        self.signer = signer
        self._kept = kept

    async def seqs(self) -> list[int]:
        """The seqs of the stored checkpoints, ascending.

        Raises:
            StorageError: storage failed.
        """
        found = (_seq_of(blob.key) for blob in await self._store.list(CHECKPOINT_PREFIX))
        return sorted(seq for seq in found if seq is not None)

    async def fetch(self, seq: int) -> Checkpoint | None:
        """The checkpoint at `seq`, or None if there is none or it is unreadable.

        Raises:
            StorageError: storage failed.
        """
        try:
            return Checkpoint.parse(await self._store.read(checkpoint_key(seq)))
        except BlobNotFound:
            return None
        except CheckpointError:
            logger.warning("unreadable audit checkpoint", extra={"checkpoint_seq": seq})
            return None

    async def write(self, seq: int, head_hash: str) -> Checkpoint:
        """Sign and store a checkpoint of `(seq, head_hash)`, log it, prune the oldest.

        Raises:
            StorageError: storage failed.
        """
        checkpoint = self.signer.make(seq, head_hash)
        await self._store.write(checkpoint.storage_key, checkpoint.to_json().encode())
        logger.info("audit checkpoint", extra={"checkpoint": asdict(checkpoint)})
        seqs = await self.seqs()
        for old in seqs[: max(0, len(seqs) - self._kept)]:
            await self._store.delete(checkpoint_key(old))
        return checkpoint

    async def check(self, conn: AsyncConnection) -> CheckpointReport:
        """`check_against` the stored checkpoints.

        Raises:
            StorageError: storage failed.
        """
        return await check_against(conn, await self.seqs(), self.fetch, self.signer)

    async def mismatched(self, conn: AsyncConnection) -> list[int]:
        """Seqs of stored checkpoints the chain no longer matches (after a restore, the newer ones).

        Raises:
            StorageError: storage failed.
        """
        head_seq = (await audit_sql.chain_head(conn))[0]
        stale: list[int] = []
        for seq in await self.seqs():
            checkpoint = await self.fetch(seq)
            if checkpoint is None:
                continue
            if seq > head_seq or await audit_sql.entry_hash_at(conn, seq) != checkpoint.head_hash:
                stale.append(seq)
        return stale

    async def retire(self, seqs: list[int]) -> str:
        """Move the checkpoints at `seqs` under `.pfs/checkpoints-retired/<stamp>/`; return that prefix.

        For after a restore to an earlier database: the newer checkpoints describe entries the
        restored chain never had, and would keep failing every verification.

        Raises:
            StorageError: storage failed.
        """
        prefix = f"{INTERNAL_PREFIX}checkpoints-retired/{datetime.now(UTC):%Y%m%dT%H%M%SZ}/"
        for seq in seqs:
            key = checkpoint_key(seq)
            await self._store.copy(key, prefix + key.removeprefix(CHECKPOINT_PREFIX))
            await self._store.delete(key)
        logger.warning("audit checkpoints retired", extra={"retired": seqs, "to": prefix})
        return prefix
