"""The build manifest of a book: its format, hash, stored form and diff. Pure functions.

Format: one line `{path}:{sha256}` per live base file (lessons, summaries and
assets; never overlays), sorted byte-wise by path, joined by "\\n" with no trailing newline.
The manifest hash is the lowercase hex sha256 of that text in UTF-8; an empty book's manifest
is the empty string.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Change = Literal["added", "modified", "deleted"]


@dataclass(frozen=True, slots=True)
class ManifestChange:
    """A path whose hash differs between two manifests (None: absent from that one)."""

    path: str
    current_hash: str | None
    target_hash: str | None
    change_type: Change


COMPRESSION_LEVEL = 1
"""zlib level of stored manifests: hashes do not compress, so a higher level buys little."""


def in_order(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`{path: sha256}` of `(path, sha256)` pairs with unique paths, in manifest order
    (byte-wise by path: the code-point order of str is the byte order of its UTF-8)."""
    return dict(sorted(entries, key=lambda item: item[0]))


def manifest_text(entries: Iterable[tuple[str, str]]) -> str:
    """Return the manifest text of `(path, sha256)` pairs (sorted here, byte-wise)."""
    ordered = sorted(entries, key=lambda item: item[0])
    return "\n".join(f"{path}:{digest}" for path, digest in ordered)


def manifest_hash(text: str) -> str:
    """Return the sha256 of a manifest text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pack(text: str) -> bytes:
    """The stored (compressed) form of a manifest text."""
    return zlib.compress(text.encode("utf-8"), COMPRESSION_LEVEL)


def unpack(blob: bytes) -> dict[str, str]:
    """Return `{path: sha256}` of a stored manifest, in its (byte-wise path) order.

    Raises:
        ValueError: the blob is not a stored manifest.
    """
    try:
        text = zlib.decompress(blob).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise ValueError("stored manifest is corrupt") from exc
    if not text:
        return {}
    files: dict[str, str] = {}
    for line in text.split("\n"):
        path, sep, digest = line.rpartition(":")
        if not sep or not path:
            raise ValueError("stored manifest is corrupt")
        files[path] = digest
    return files


def diff(current: Mapping[str, str], target: Mapping[str, str]) -> list[ManifestChange]:
    """Files whose hash differs between `target` (last build) and `current`, by path (byte-wise)."""
    changed: list[ManifestChange] = []
    for path in sorted(current.keys() | target.keys()):
        now = current.get(path)
        before = target.get(path)
        if now == before:
            continue
        kind = "added" if before is None else "deleted" if now is None else "modified"
        changed.append(ManifestChange(path, now, before, kind))
    return changed
