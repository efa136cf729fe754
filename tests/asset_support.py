"""Helpers for the asset tests: sample files and what the backends hold."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from typing import Any

from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql as audit_repository
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.storage.blobs import BlobStore


def png(seed: int = 0, size: int = 0) -> bytes:
    """A valid 1x1 PNG; `seed` changes its bytes (a text chunk) but not its type; `size` pads
    that chunk so the image is at least that many bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"seed\x00" + str(seed).encode() + b"." * max(0, size - 80))
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def noise(size: int, seed: int = 7) -> bytes:
    """Deterministic bytes no MIME signature matches."""
    rng = random.Random(seed)
    return b"\x00pfs" + rng.randbytes(size - 4)


def b64(data: bytes) -> str:
    """Standard base64 text of `data`."""
    return base64.b64encode(data).decode("ascii")


def sha(data: bytes) -> str:
    """Lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


async def stored_keys(settings: Settings, prefix: str = "") -> list[str]:
    """Every object key in the store under `prefix` (internal probe objects left out)."""
    store = BlobStore.from_settings(settings)
    try:
        return [blob.key for blob in await store.list(prefix) if not blob.key.endswith("ready-probe")]
    finally:
        store.close()


async def stored_bytes(settings: Settings, key: str) -> bytes:
    """The bytes of one stored object."""
    store = BlobStore.from_settings(settings)
    try:
        return await store.read(key)
    finally:
        store.close()


async def overwrite(settings: Settings, key: str, data: bytes) -> None:
    """Replace a stored object behind the service's back (to simulate corruption)."""
    store = BlobStore.from_settings(settings)
    try:
        await store.write(key, data)
    finally:
        store.close()


async def journal_rows(settings: Settings) -> list[JournalRow]:
    """Every journal row, tombstones included."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return await journal.all_rows(conn)
    finally:
        await db.dispose()


async def history(settings: Settings, book_id: str, path: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The (first `limit`) audit entries of one base file, in order."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return await audit_repository.file_history(conn, book_id, path, "__base__", limit=limit)
    finally:
        await db.dispose()
