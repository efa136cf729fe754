"""Compare the journal with storage and report every disagreement.

Invariants checked (reliability.md §1.3):
- no lost file: every live, published journal row has an object whose sha256 is the row's;
- no resurrected file: a published tombstone has no object;
- no orphan: every object under `books/` has a live journal row;
- no leftover: no committed change is still waiting to be published.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.engine import Database
from panaversity_fs.paths import BASE_USER, storage_key
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore


@dataclass
class FsckReport:
    """Every problem found, by kind (storage keys or journal keys)."""

    checked_rows: int = 0
    checked_objects: int = 0
    missing: list[str] = field(default_factory=lambda: list[str]())
    corrupt: list[str] = field(default_factory=lambda: list[str]())
    resurrected: list[str] = field(default_factory=lambda: list[str]())
    orphans: list[str] = field(default_factory=lambda: list[str]())
    pending: list[str] = field(default_factory=lambda: list[str]())

    @property
    def ok(self) -> bool:
        """Whether journal and storage agree completely."""
        return not (self.missing or self.corrupt or self.resurrected or self.orphans or self.pending)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked_rows": self.checked_rows,
            "checked_objects": self.checked_objects,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "resurrected": self.resurrected,
            "orphans": self.orphans,
            "pending": self.pending,
        }


async def check(db: Database, store: BlobStore, book_id: str | None = None) -> FsckReport:
    """Check journal against storage (one book, or all) and return what disagrees."""
    report = FsckReport()
    async with db.read() as conn:
        rows = await journal.all_rows(conn, book_id)
    expected: set[str] = set()
    for row in rows:
        report.checked_rows += 1
        key = storage_key(row.book_id, row.path, row.user_id if row.user_id != BASE_USER else None)
        if row.publish_pending:
            report.pending.append(key)
            if row.exists:
                expected.add(key)
            continue
        if not row.exists:
            if await store.exists(key):
                report.resurrected.append(key)
            continue
        expected.add(key)
        try:
            data = await store.read(key)
        except BlobNotFound:
            report.missing.append(key)
            continue
        if hashlib.sha256(data).hexdigest() != row.sha256:
            report.corrupt.append(key)
    prefix = f"books/{book_id}/" if book_id else "books/"
    for blob in await store.list(prefix):
        report.checked_objects += 1
        if blob.key not in expected:
            report.orphans.append(blob.key)
    return report
