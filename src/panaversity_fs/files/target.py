"""`Target`: a validated file address (book, canonical path, overlay owner)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from panaversity_fs.db.journal_sql import FileKey
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.results import Source
from panaversity_fs.paths import BASE_USER, asset_path, check_book_id, check_user_id, classify, content_path


@dataclass(frozen=True, slots=True)
class Target:
    """A validated file address: book, canonical path, optional overlay owner."""

    book_id: str
    path: str
    user_id: str | None

    @classmethod
    def content(cls, book_id: object, path: object, user_id: object = None) -> Target:
        """A lesson or summary, base or overlay.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: an argument is malformed.
        """
        return cls(check_book_id(book_id), content_path(path).path, check_user_id(user_id))

    @classmethod
    def asset(cls, book_id: object, path: object) -> Target:
        """A shared asset under `static/` (assets have no overlays).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: an argument is malformed.
        """
        return cls(check_book_id(book_id), asset_path(path).path, None)

    @classmethod
    def file(cls, book_id: object, path: object, user_id: object = None) -> Target:
        """Any journaled file: a lesson or summary (base or overlay) or a shared asset.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: an argument is malformed (assets
                have no overlays).
        """
        book, user, where = check_book_id(book_id), check_user_id(user_id), classify(path).path
        if user is not None and where.startswith("static/"):
            raise InvalidArgument("assets have no overlays: omit user_id", field="user_id")
        return cls(book, where, user)

    @property
    def key(self) -> FileKey:
        """The journal key (overlays by user, shared content as `__base__`)."""
        return FileKey(self.book_id, self.path, self.user_id or BASE_USER)

    def arguments(self, expected: str | None, new_hash: str | None = None) -> dict[str, object]:
        """What identifies a mutation of this file (for idempotency fingerprints)."""
        return {
            "book_id": self.book_id,
            "path": self.path,
            "user_id": self.user_id,
            "expected_hash": expected,
            "sha256": new_hash,
        }

    @property
    def source(self) -> Source:
        """`overlay` for a user's file, `base` for shared content."""
        return "overlay" if self.user_id else "base"


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()
