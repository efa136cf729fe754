"""`RecentHashes`: the hash each file had when this process last committed a write to it."""

from __future__ import annotations

from collections import OrderedDict

from panaversity_fs.db.journal_sql import FileKey


class RecentHashes:
    """The last hashes this process committed, for the `capacity` files written most recently.

    A write whose `expected_hash` is the hash its file got from this process's last commit to it
    most likely goes ahead, so it skips the early look that refuses a stale hash before any
    byte is staged (a database round trip). Nothing else depends on it: the commit's
    compare-and-swap still decides. If another process changed the file since, the hash is
    stale and such a write is refused by its commit instead of before staging; it costs the
    bytes it staged, and its outcome and audit entry are the same.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._hashes: OrderedDict[FileKey, str] = OrderedDict()

    def holds(self, key: FileKey, sha256: str) -> bool:
        """Whether `sha256` is the hash this process last committed for `key`."""
        return self._hashes.get(key) == sha256

    def remember(self, key: FileKey, sha256: str) -> None:
        """Note that this process just committed `sha256` as `key`'s content."""
        self._hashes[key] = sha256
        self._hashes.move_to_end(key)
        if len(self._hashes) > self._capacity:
            self._hashes.popitem(last=False)

    def forget(self, key: FileKey) -> None:
        """Drop what is known of `key` (a refusal, a failure, a delete, an unknown outcome)."""
        self._hashes.pop(key, None)
