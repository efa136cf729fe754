"""`BlobStore`: the bytes of the books, on a local folder or an S3-compatible bucket.

OpenDAL's blocking `Operator` runs on a dedicated thread pool: it is faster than the async
operator for whole-object reads on this kind of machine, and the async operator's Tokio threads
can abort the interpreter at exit (feasibility.md §2), which the blocking one does not.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import opendal
from opendal import exceptions as dal

from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError

INTERNAL_PREFIX = ".pfs/"
"""Objects no tool path can name (every tool key starts with `books/`)."""

STAGING_PREFIX = ".pfs/staging/"
"""Where bytes wait between upload and the journal commit that makes them visible."""

_T = TypeVar("_T")


class StorageError(Exception):
    """The store failed or timed out; the operation may be retried."""


class BlobNotFound(StorageError):
    """No object at that key."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A listed object."""

    key: str
    size: int
    last_modified: datetime | None


class BlobStore:
    """Async facade over an OpenDAL operator."""

    def __init__(self, operator: opendal.Operator, backend: str, threads: int, timeout: float):
        self.backend = backend
        self._operator = operator
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pfs-storage")
        self._can_rename = bool(operator.capability().rename)
        # Listing uses the async operator: the blocking one holds the GIL while it pages
        # through a remote listing, which would stall every other thread of the process.
        self._lister = operator.to_async_operator()

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        """Open the store `settings` describe.

        Raises:
            ConfigurationError: the fs root is, or contains, a symlink, or cannot be created.
        """
        if settings.storage_backend == "fs":
            root = _prepare_fs_root(settings.storage_root)
            operator = opendal.Operator("fs", root=str(root), atomic_write_dir=str(root / ".pfs" / "tmp"))
        else:
            options = {
                "bucket": settings.s3_bucket or "",
                "region": settings.s3_region,
                "root": settings.s3_root,
            }
            if settings.s3_endpoint:
                options["endpoint"] = settings.s3_endpoint
            if settings.s3_access_key_id and settings.s3_secret_access_key:
                options["access_key_id"] = settings.s3_access_key_id.get_secret_value()
                options["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
            operator = opendal.Operator("s3", **options)
        return cls(operator, settings.storage_backend, settings.storage_threads, settings.storage_timeout)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, fn), self._timeout)
        except dal.NotFound as exc:
            raise BlobNotFound(str(exc)) from None
        except TimeoutError:
            raise StorageError("storage call timed out") from None
        except dal.Error as exc:
            raise StorageError(type(exc).__name__) from exc

    async def read(self, key: str) -> bytes:
        """Return the bytes at `key`.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        return bytes(await self._run(lambda: self._operator.read(key)))

    async def write(self, key: str, data: bytes) -> None:
        """Store `data` at `key`, replacing any object there, atomically for readers."""
        await self._run(lambda: self._operator.write(key, data))

    async def stage(self, data: bytes) -> str:
        """Store `data` under a fresh staging key and return the key."""
        key = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        await self.write(key, data)
        return key

    async def publish(self, staging_key: str, key: str) -> None:
        """Make the staged object the object at `key` (rename where possible, else copy)."""
        if self._can_rename:
            await self._run(lambda: self._operator.rename(staging_key, key))
            return
        await self._run(lambda: self._operator.copy(staging_key, key))
        await self.delete(staging_key)

    async def delete(self, key: str) -> None:
        """Remove the object at `key`; removing a missing object is not an error."""
        await self._run(lambda: self._operator.delete(key))

    async def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""
        return bool(await self._run(lambda: self._operator.exists(key)))

    async def list(self, prefix: str) -> list[BlobInfo]:
        """Return every object (not directory) under `prefix`, recursively, sorted by key."""
        try:
            return await asyncio.wait_for(self._list(prefix), self._timeout * 4)
        except dal.NotFound:
            return []
        except TimeoutError:
            raise StorageError("storage listing timed out") from None
        except dal.Error as exc:
            raise StorageError(type(exc).__name__) from exc

    async def _list(self, prefix: str) -> list[BlobInfo]:
        found: list[BlobInfo] = []
        async for entry in await self._lister.list(prefix, recursive=True):
            if entry.path.endswith("/"):
                continue
            meta = entry.metadata
            if meta.last_modified is None:
                meta = await self._lister.stat(entry.path)
            found.append(BlobInfo(entry.path, int(meta.content_length), meta.last_modified))
        return sorted(found, key=lambda info: info.key)

    async def check(self) -> None:
        """Round-trip a probe object (for `/ready`).

        Raises:
            StorageError: the store does not answer.
        """
        key = f"{INTERNAL_PREFIX}ready-probe"
        await self.write(key, b"ok")
        await self.read(key)

    def close(self) -> None:
        """Stop the I/O threads (waiting for calls in flight)."""
        self._pool.shutdown(wait=True)


def _prepare_fs_root(root: Path) -> Path:
    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create storage root {root}: {exc.strerror}") from None
    absolute = root.absolute()
    if absolute.resolve() != Path(os.path.normpath(absolute)):
        raise ConfigurationError(f"storage root {absolute} is or lies under a symlink")
    for dirpath, dirnames, filenames in os.walk(absolute):
        for name in dirnames + filenames:
            candidate = Path(dirpath) / name
            if candidate.is_symlink():
                raise ConfigurationError(
                    f"storage root contains a symlink ({candidate.relative_to(absolute)}); refusing to start"
                )
    for internal in ("tmp", "staging"):
        (absolute / ".pfs" / internal).mkdir(parents=True, exist_ok=True)
    return absolute
