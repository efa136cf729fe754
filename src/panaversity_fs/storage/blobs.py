"""`BlobStore`: the bytes of the books, on a local folder or an S3-compatible bucket.

OpenDAL's blocking `Operator` runs on a dedicated thread pool: it is faster than the async
operator for whole-object reads on this kind of machine, and the async operator's Tokio threads
can abort the interpreter at exit (measured: about one exit in 30), which the blocking one does
not. Listing is the exception: see `BlobStore.__init__`. On a local folder the hot path's
writes, reads, publishes and deletes are plain system calls instead (`storage.local`): a
quarter of OpenDAL's CPU for the same work.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import opendal
from opendal import exceptions as dal
from opendal.file import File

from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError, Unavailable
from panaversity_fs.storage.local import NO_HARD_LINKS, TMP_FOLDER, LocalFiles, PendingWrite

logger = logging.getLogger(__name__)

INTERNAL_PREFIX = ".pfs/"
"""Objects no tool path can name (every tool key starts with `books/`)."""

STAGING_PREFIX = ".pfs/staging/"
"""Where bytes wait between upload and the journal commit that makes them visible."""

UPLOAD_PREFIX = ".pfs/uploads/"
"""Where upload-URL bytes wait for their completion; `{expiry}-{uuid}`, removed once expired."""

_T = TypeVar("_T")

INLINE_READ_BYTES = 256 * 1024
"""Reads of a local object of known size up to this many bytes run on the event loop (a page
cache copy of a few microseconds); larger ones, and every S3 call, on the I/O threads."""

DAL_ERRORS: tuple[type[Exception], ...] = tuple(
    value for value in vars(dal).values() if isinstance(value, type) and issubclass(value, Exception)
)
"""Every exception OpenDAL raises. They do not derive from `opendal.exceptions.Error`, so
catching that alone would let a refused connection escape as an unexpected error."""


class StorageError(Exception):
    """The store failed or timed out; the operation may be retried."""


def storage_failure(exc: BaseException) -> Unavailable:
    """Log a storage failure and return the caller's UNAVAILABLE error (safe to retry); the
    database's twin is `db.engine.database_failure`."""
    logger.warning("storage failure", exc_info=exc)
    return Unavailable("the storage is unavailable; nothing was changed, retry later")


class BlobNotFound(StorageError):
    """No object at that key."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A listed object."""

    key: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """A request a client can send straight to the store."""

    url: str
    method: str
    headers: dict[str, str]


def upload_key(expires: int) -> str:
    """A fresh upload key that records when its upload URL expires (unix seconds)."""
    return f"{UPLOAD_PREFIX}{expires}-{uuid.uuid4().hex}"


def upload_expiry(key: str) -> int | None:
    """The expiry recorded in an upload key, or None if the key is not one of ours."""
    stamp = key.removeprefix(UPLOAD_PREFIX).partition("-")[0]
    return int(stamp) if key.startswith(UPLOAD_PREFIX) and stamp.isdigit() else None


class BlobReader:
    """Sequential reads of one object through one open handle (close it when done).

    On the fs backend the handle keeps reading the object it opened even if a publish
    replaces the key meanwhile.
    """

    def __init__(self, store: BlobStore, handle: File) -> None:
        self._store = store
        self._handle = handle

    async def read(self, size: int) -> bytes:
        """Return up to `size` bytes (empty at the end).

        Raises:
            BlobNotFound: the object vanished.
            StorageError: the store failed.
        """
        return bytes(await self._store.run_file(lambda: self._handle.read(size)))

    async def close(self) -> None:
        """Release the handle."""
        await self._store.run_file(self._handle.close)


class BlobWriter:
    """Streams bytes into one object; nothing is visible at the key until `close`."""

    def __init__(self, store: BlobStore, handle: File) -> None:
        self._store = store
        self._handle = handle

    async def write(self, data: bytes) -> None:
        """Append `data`.

        Raises:
            StorageError: the store failed.
        """
        await self._store.run_file(lambda: self._handle.write(data))

    async def close(self) -> None:
        """Finish the object (it becomes visible at its key)."""
        await self._store.run_file(self._handle.close)


def new_staging_key() -> str:
    """A fresh key under the staging prefix (never reused: 128 random bits)."""
    return f"{STAGING_PREFIX}{uuid.uuid4().hex}"


class BlobStore:
    """Async facade over an OpenDAL operator."""

    def __init__(
        self,
        operator: opendal.Operator,
        backend: str,
        threads: int,
        timeout: float,
        local: LocalFiles | None = None,
    ):
        """`local`: the folder `operator` serves (fs backend), for the hot path's calls."""
        self.backend = backend
        self._operator = operator
        self._local = local
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pfs-storage")
        self._in_flight: set[Future[Any]] = set()
        self.on_error: Callable[[str], None] | None = None
        """Told the kind of every failed or timed-out call (the server counts them as metrics)."""
        self.on_call: Callable[[bool], None] | None = None
        """Told whether each call succeeded (a missing object counts as an answer, not a failure)."""
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
            operator = opendal.Operator("fs", root=str(root), atomic_write_dir=str(root / TMP_FOLDER))
            local = LocalFiles(root)
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
            # Each attempt is bounded, so that no I/O thread can hang on a stalled connection:
            # the caller's own deadline does not stop the thread, and closing waits for it.
            timeout = settings.storage_timeout
            operator = opendal.Operator("s3", **options).layer(
                opendal.layers.TimeoutLayer(timeout=timeout, io_timeout=timeout)
            )
            if settings.storage_retries:
                operator = operator.layer(_retry_layer(settings.storage_retries))
            local = None
        return cls(
            operator, settings.storage_backend, settings.storage_threads, settings.storage_timeout, local
        )

    @property
    def local(self) -> LocalFiles | None:
        """The fs backend's folder as plain files (None on s3)."""
        return self._local

    async def _run(self, fn: Callable[[], _T], undo: Callable[[], None] | None = None) -> _T:
        """Run `fn` on an I/O thread; if the caller does not get its result (it failed, timed
        out, or the caller was cancelled, even just after `fn` returned), `undo` runs once `fn`
        has returned (on that thread if it is still running)."""
        call = self._pool.submit(fn)
        self._in_flight.add(call)
        call.add_done_callback(self._in_flight.discard)
        try:
            return await self._answer(asyncio.wrap_future(call), self._timeout)
        except BaseException as exc:
            if undo is not None:
                call.add_done_callback(lambda _: undo())
            if isinstance(exc, dal.NotFound | FileNotFoundError):
                raise BlobNotFound(str(exc)) from None
            raise

    def _here(self, fn: Callable[[], _T]) -> _T:
        """Run a quick local call on the calling thread (the event loop's), counting it and
        mapping its errors as `run_file` does."""
        try:
            result = fn()
        except OSError as exc:
            raise self._file_failure(exc) from exc
        self._answered(True)
        return result

    def _file_failure(self, exc: OSError) -> StorageError:
        """The error of a call that failed with a plain `OSError`, counted: `BlobNotFound` for
        a missing object (an answer), else `StorageError`."""
        if isinstance(exc, FileNotFoundError) or "NotFound" in str(exc):
            self._answered(True)
            return BlobNotFound("object not found")
        self._failed(type(exc).__name__)
        return StorageError(type(exc).__name__)

    async def _answer(
        self, work: Awaitable[_T], limit: float, timed_out: str = "storage call timed out"
    ) -> _T:
        """Await one storage call within `limit` seconds, counting it; OpenDAL's errors become
        `StorageError` (a missing object, `dal.NotFound` or `FileNotFoundError`, is an answer
        and passes through; other `OSError`s are left to `run_file`).

        A cancellation of the caller (its deadline, a shutdown) always wins: Python 3.11's
        `asyncio.wait_for` returned the result instead when the call finished in the same turn
        of the event loop, so a read whose storage call ended as its deadline passed was not cut.
        """
        try:
            async with asyncio.timeout(limit):
                result = await work
        except (dal.NotFound, FileNotFoundError):
            self._answered(True)
            raise
        except TimeoutError:
            self._failed("timeout")
            raise StorageError(timed_out) from None
        except DAL_ERRORS as exc:
            self._failed(type(exc).__name__)
            raise StorageError(type(exc).__name__) from exc
        self._answered(True)
        return result

    def _failed(self, kind: str) -> None:
        self._answered(False)
        if self.on_error is not None:
            self.on_error(kind)

    def _answered(self, ok: bool) -> None:
        if self.on_call is not None:
            self.on_call(ok)

    async def read(self, key: str, size: int | None = None) -> bytes:
        """Return the bytes at `key`; given the object's known `size` (> 0), as a ranged read of
        that many bytes (what it has, if the object is shorter).

        OpenDAL's whole-object read allocates a 2 MiB buffer per call, which the mmap threshold
        the server pins (`archive/malloc.py`) maps and unmaps every time: a 5 KB read costs
        1.4 ms of CPU whole, 0.08 ms ranged.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        local = self._local
        if local is not None and 0 < (size or 0) <= INLINE_READ_BYTES:
            return self._here(lambda: local.read(key, 0, size))
        if size:
            return await self.read_range(key, 0, size)
        if local is not None:
            return await self.run_file(lambda: local.read(key))
        return bytes(await self._run(lambda: self._operator.read(key)))

    async def read_range(self, key: str, offset: int, size: int) -> bytes:
        """Return up to `size` bytes of the object at `key`, starting at `offset`.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """

        local = self._local
        if local is not None:
            return await self.run_file(lambda: local.read(key, offset, size))

        def read() -> bytes:
            try:
                return self._operator.read(key, offset=offset, size=size)
            except dal.NotFound:
                raise
            except Exception:
                # A range past the end fails (fs: RangeNotSatisfied, s3: "too little data");
                # an object shorter than offset + size gives what it has from offset.
                length = int(self._operator.stat(key).content_length)
                if length >= offset + size:
                    raise
                return (
                    self._operator.read(key, offset=offset, size=length - offset) if length > offset else b""
                )

        return bytes(await self._run(read))

    async def write(self, key: str, data: bytes) -> None:
        """Store `data` at `key`, replacing any object there, atomically for readers."""
        await self.write_all([(key, data)])

    async def write_all(
        self, items: Sequence[tuple[str, bytes]], fresh: Collection[str] = (), durable: bool = True
    ) -> None:
        """Store each `(key, data)` in one storage call (one thread hand-off).

        On a local folder: each object's bytes go to a temporary file here, one call on an I/O
        thread waits until they are all on disk, then each is renamed into place here. The
        `fresh` keys (never used before, read by nobody before the caller commits to them:
        staging keys) are written in place instead. An item (not fresh) whose `data` is the
        very object of an earlier item's is a hard link to that item's file (bytes written and
        synced once). With `durable` false the local files are not synced (no wait for the disk,
        no thread hand-off): the caller keeps the bytes durable elsewhere until it `sync`s them.
        """
        if self._local is not None:
            await self._write_local(self._local, items, fresh, durable)
            return

        def write() -> None:
            for key, data in items:
                self._operator.write(key, data)

        await self._run(write)

    async def _write_local(
        self,
        local: LocalFiles,
        items: Sequence[tuple[str, bytes]],
        fresh: Collection[str],
        durable: bool = True,
    ) -> None:
        pending: list[PendingWrite] = []
        first_of: dict[int, PendingWrite] = {}
        again: list[tuple[PendingWrite, str, bytes]] = []

        def abandon() -> None:
            for write in pending:
                write.abandon()

        try:
            for key, data in items:
                earlier = first_of.get(id(data))
                if earlier is not None and key not in fresh:
                    again.append((earlier, key, data))
                    continue
                pending.append(self._here(lambda: local.begin_write(key, data, key in fresh)))  # noqa: B023
                first_of[id(data)] = pending[-1]
        except BaseException:
            abandon()
            raise

        def sync() -> None:
            for write in pending:
                write.sync()

        if durable:
            await self.run_file(sync, abandon)
        try:
            unlinked: list[tuple[str, bytes]] = []
            for earlier, key, data in again:
                if not self._here(partial(_linked, local, earlier, key)):
                    unlinked.append((key, data))
            if unlinked:
                await self._write_local(local, unlinked, ())
        except BaseException:
            abandon()
            raise
        for done, write in enumerate(pending):
            try:
                self._here(write.finish)
            except BaseException:
                for rest in pending[done + 1 :]:
                    rest.abandon()
                raise

    async def sync(self, key: str) -> None:
        """Wait until the bytes of the object at `key` are on disk (local files written without
        `durable`; elsewhere objects are durable once written, and this does nothing).

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        local = self._local
        if local is not None:
            await self.run_file(lambda: local.sync(key))

    async def publish(self, staging_key: str, key: str) -> None:
        """Make the staged object the object at `key` (rename where possible, else copy)."""
        local = self._local
        if local is not None:
            self._here(lambda: local.rename(staging_key, key))
            return
        if self._can_rename:
            await self._run(lambda: self._operator.rename(staging_key, key))
            return
        await self._run(lambda: self._operator.copy(staging_key, key))
        await self.delete(staging_key)

    async def delete(self, key: str) -> None:
        """Remove the object at `key`; removing a missing object is not an error."""
        local = self._local
        if local is not None:
            self._here(lambda: local.delete(key))
            return
        await self._run(lambda: self._operator.delete(key))

    async def copy(self, source: str, target: str) -> None:
        """Copy the object at `source` to `target` (a new object with a fresh modification time).

        Raises:
            BlobNotFound: no object at `source`.
            StorageError: the store failed.
        """
        await self._run(lambda: self._operator.copy(source, target))

    async def size(self, key: str) -> int:
        """Return the size in bytes of the object at `key`.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        return int((await self._run(lambda: self._operator.stat(key))).content_length)

    async def stat(self, key: str) -> BlobInfo:
        """Return the size and modification time of the object at `key`.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        meta = await self._run(lambda: self._operator.stat(key))
        return BlobInfo(key, int(meta.content_length), meta.last_modified)

    async def sha256(self, key: str, chunk: int = 1024 * 1024) -> tuple[str, int]:
        """Return the lowercase hex sha256 and the size of the object at `key`, read in chunks.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        digest = hashlib.sha256()
        size = 0
        reader = await self.open_reader(key)
        try:
            while data := await reader.read(chunk):
                digest.update(data)
                size += len(data)
        finally:
            await reader.close()
        return digest.hexdigest(), size

    async def open_reader(self, key: str, offset: int = 0) -> BlobReader:
        """Open the object at `key` for chunked reading from `offset`.

        A missing object may only be reported by the first `read` (opening is lazy).

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        handle = await self._run(lambda: self._operator.open(key, "rb"))
        reader = BlobReader(self, handle)
        if offset:
            await self.run_file(lambda: handle.seek(offset))
        return reader

    async def open_writer(self, key: str) -> BlobWriter:
        """Open `key` for streaming writes; the object replaces any old one on `close`.

        Raises:
            StorageError: the store failed.
        """
        return BlobWriter(self, await self._run(lambda: self._operator.open(key, "wb")))

    async def presign_write(self, key: str, ttl: int) -> PresignedRequest:
        """A request that lets a client PUT the object at `key` directly, valid `ttl` seconds.

        Raises:
            StorageError: the backend cannot presign (the fs backend) or failed.
        """
        if not self._operator.capability().presign_write:
            raise StorageError("this storage backend cannot presign uploads")
        try:
            signed = await self._answer(self._lister.presign_write(key, ttl), self._timeout)
        except dal.NotFound as exc:
            raise StorageError(type(exc).__name__) from exc
        return PresignedRequest(signed.url, signed.method, dict(signed.headers))

    async def run_file(self, fn: Callable[[], _T], undo: Callable[[], None] | None = None) -> _T:
        """Run a call that reports failures as plain `OSError`s (an open `opendal.File`, the
        local folder) on the I/O threads, mapping its errors; `undo` as for `_run`.

        Raises:
            BlobNotFound: no object there.
            StorageError: the store failed.
        """
        try:
            return await self._run(fn, undo)
        except OSError as exc:
            raise self._file_failure(exc) from exc

    async def exists(self, key: str) -> bool:
        """Whether an object exists at `key`."""
        return bool(await self._run(lambda: self._operator.exists(key)))

    async def list(self, prefix: str) -> list[BlobInfo]:
        """Return every object (not directory) under `prefix`, recursively, sorted by key."""
        try:
            return await self._answer(self._list(prefix), self._timeout * 4, "storage listing timed out")
        except dal.NotFound:
            return []

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

    async def aclose(self) -> None:
        """Stop the I/O threads: queued calls are cancelled, calls in flight are waited for.

        Unlike `close`, this does not block the event loop, so a caller can bound the wait;
        a thread still running after that ends on its own (every s3 attempt has a time limit).
        """
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = [asyncio.wrap_future(call) for call in self._in_flight]
        if running:
            await asyncio.wait(running)


def _linked(local: LocalFiles, write: PendingWrite, key: str) -> bool:
    """Link `key` to the file of `write`; False where the file system will not link it.

    Raises:
        OSError: the file system refused otherwise.
    """
    try:
        local.link(write, key)
    except OSError as exc:
        if exc.errno in NO_HARD_LINKS:
            return False
        raise
    return True


def _retry_layer(retries: int) -> opendal.layers.RetryLayer:
    """Retries of s3 requests OpenDAL marks temporary (5xx, SlowDown, resets, bodies cut short).

    Repeating them is safe: a PUT writes the same bytes to the same fresh staging or upload key,
    a copy the same source to the same key, deleting a gone object succeeds, and a read or stat
    changes nothing (a body cut short resumes where it ended; reads are hash-checked anyway).
    Bad input never gets this far (paths are validated first, so a retry never repeats a refusal). Backoff 0.1 s doubling to at
    most 1 s, jittered: three retries add a second or two, inside `storage_timeout`.
    """
    return opendal.layers.RetryLayer(max_times=retries, factor=2.0, jitter=True, min_delay=0.1, max_delay=1.0)


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
    for internal in (TMP_FOLDER, STAGING_PREFIX):
        (absolute / internal).mkdir(parents=True, exist_ok=True)
    return absolute
