"""Upload tickets (the signed claims of an upload URL), inline base64, and the write contract
checked before any bytes are sent."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from panaversity_fs.errors import (
    Conflict,
    Forbidden,
    HashRequired,
    InvalidArgument,
    NotFound,
    PanaversityFSError,
    TooLarge,
)


@dataclass(frozen=True, slots=True)
class UploadTicket:
    """The signed claims of an upload URL."""

    book_id: str
    path: str
    key: str
    size: int
    sha256: str
    expected: str | None
    agent_id: str

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> UploadTicket:
        """Rebuild a ticket from verified claims.

        Raises:
            Forbidden: the claims are not an upload ticket's.
        """
        book, path, key, size, digest = (claims.get(k) for k in ("b", "p", "k", "n", "h"))
        expected, agent = claims.get("e"), claims.get("a")
        if not (
            isinstance(book, str)
            and isinstance(path, str)
            and isinstance(key, str)
            and isinstance(size, int)
            and isinstance(digest, str)
            and isinstance(agent, str)
            and (expected is None or isinstance(expected, str))
        ):
            raise Forbidden("the signed URL is invalid")
        return cls(book, path, key, size, digest, expected, agent)

    def claims(self) -> dict[str, Any]:
        """The claims to sign."""
        return {
            "b": self.book_id,
            "p": self.path,
            "k": self.key,
            "n": self.size,
            "h": self.sha256,
            "e": self.expected,
            "a": self.agent_id,
        }


def decode_inline(value: object, limit: int) -> bytes:
    """Decode canonical standard base64 (padded, no whitespace) of at most `limit` bytes.

    Raises:
        InvalidArgument: not a string, not strict base64, or empty.
        TooLarge: over `limit` decoded bytes.
    """
    if not isinstance(value, str):
        raise InvalidArgument("binary_data must be a base64 string", field="binary_data")
    too_large = TooLarge(
        f"inline uploads are limited to {limit} bytes: call upload_asset with size and sha256 "
        "instead of binary_data to get an upload URL",
        limit=limit,
    )
    if len(value) > 4 * ((limit + 2) // 3):
        raise too_large
    invalid = InvalidArgument(
        "binary_data must be standard base64: padded, no whitespace or line breaks", field="binary_data"
    )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None
    # b64decode tolerates excess padding and stray low bits; one text per byte string.
    if base64.b64encode(data).decode("ascii") != value:
        raise invalid
    if len(data) > limit:
        raise too_large
    if not data:
        raise InvalidArgument("binary_data is empty", field="binary_data")
    return data


def contract_refusal(expected: str | None, current: str | None) -> PanaversityFSError | None:
    """What the commit of a write with `expected` would answer while the asset's hash is
    `current` (None: absent): nothing (it would pass) or the refusal."""
    if expected is None and current is not None:
        return HashRequired(
            "the asset exists: call get_asset, then upload again with its file_hash as expected_hash",
            current_hash=current,
        )
    if expected is not None and current is None:
        return NotFound("the asset does not exist: upload it without expected_hash")
    if expected is not None and expected != current:
        return Conflict("expected_hash is not the asset's current hash", current_hash=current)
    return None
