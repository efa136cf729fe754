"""`LocalFiles`: the fs backend's hot-path object calls made as plain system calls.

Every write, read and publish of a journaled file goes through these. OpenDAL's fs backend
does the same work (a temporary file in the atomic-write folder, fsync, rename into place) but
hands each of its dozen steps (mkdir and stat of both folders, open, write, close, fsync,
rename, stat) to its Tokio threads and back: measured on this kind of machine, a 5 KB write
costs 430 us of CPU through OpenDAL and 117 us here, a rename 160 and 20 us, a ranged read 95
and 15 us (docs/benchmarks.md, "The hot path, fourth pass"). The layout and the guarantees are
OpenDAL's: objects are files under the root at their key, a write is invisible until its
rename, its bytes are on disk (fsync) before they are visible. The one exception is a fresh
key (a write's staging key: never used before, read by nobody before the journal commits to
it), which is written in place: its rename would only cost time. Listing, copies, streaming
and every other call stay with OpenDAL, on the same folder.

Which thread runs what (`BlobStore` decides): the calls that wait for the disk (fsync, reads
of large or many objects) run on the I/O threads; the quick ones (opening and filling a
temporary file, a rename, a small read, all answered from the page cache) run where they are
called, on the event loop. Each system call a worker thread makes must take the interpreter's
lock back when it returns, and the busy loop holds that lock for up to the 5 ms switch
interval: a write made of five such calls on a worker thread wrote fewer files per second from
8 clients than OpenDAL's single call, though it cost a quarter of the CPU.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TMP_FOLDER = ".pfs/tmp"
"""Where writes put their bytes before the rename that makes them visible (OpenDAL's
`atomic_write_dir` of the same store)."""

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class LocalFiles:
    """Objects as files under `root` (a folder without symlinks, checked at start-up)."""

    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._tmp = os.path.join(self._root, TMP_FOLDER)

    def _path(self, key: str) -> str:
        """The file of `key`.

        Raises:
            OSError: `key` is not a relative path inside the root (EINVAL).
        """
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise OSError(errno.EINVAL, f"not an object key: {key!r}")
        return os.path.join(self._root, *parts)

    def begin_write(self, key: str, data: bytes, fresh: bool = False) -> PendingWrite:
        """Put `data` in a fresh temporary file for `key` (not yet on disk, not yet visible).
        A `fresh` key (one no object ever had, that nobody reads before the caller commits to
        it: a staging key) is written in place instead, saving the rename.

        Raises:
            OSError: the file system refused, or a `fresh` key exists (nothing is left behind).
        """
        target = self._path(key)
        if fresh:
            temporary = target
        else:
            temporary = os.path.join(self._tmp, f"{os.path.basename(target)}.{uuid.uuid4().hex[:8]}")
        try:
            fd = os.open(temporary, _CREATE, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(temporary), exist_ok=True)
            fd = os.open(temporary, _CREATE, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            _remove(temporary)
            raise
        return PendingWrite(fd, temporary, target)

    def link(self, write: PendingWrite, key: str) -> None:
        """Make the bytes of `write` (synced, not yet finished) the object at `key` too, without
        copying them: a hard link to its file, replacing any object there atomically. Objects
        are never changed in place, so two keys may share one file.

        Raises:
            OSError: the file system refused (one without hard links: EPERM, EXDEV, ENOTSUP).
        """
        target = self._path(key)
        try:
            _link_creating_parent(write.temporary, target)
            return
        except FileExistsError:
            pass
        temporary = os.path.join(self._tmp, f"{os.path.basename(target)}.{uuid.uuid4().hex[:8]}")
        _link_creating_parent(write.temporary, temporary)
        try:
            os.rename(temporary, target)
        except BaseException:
            _remove(temporary)
            raise

    def read(self, key: str, offset: int = 0, size: int | None = None) -> bytes:
        """Return `size` bytes of the object at `key` from `offset` (all of them for None);
        fewer if the object ends first, none if it ends before `offset`.

        Raises:
            FileNotFoundError: no object there.
            OSError: the file system refused.
        """
        fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size is None:
                size = max(os.fstat(fd).st_size - offset, 0)
            chunks: list[bytes] = []
            while size > 0:
                chunk = os.pread(fd, size, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    def sync(self, key: str) -> None:
        """Wait until the bytes of the object at `key` are on disk (blocking: run it on a worker
        thread).

        Raises:
            FileNotFoundError: no object there.
            OSError: the file system refused.
        """
        fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: str, target: str) -> None:
        """Move the object at `source` to `target`, replacing any object there, atomically.

        Raises:
            FileNotFoundError: no object at `source`.
            OSError: the file system refused.
        """
        _rename_creating_parent(self._path(source), self._path(target))

    def delete(self, key: str) -> None:
        """Remove the object at `key`; removing a missing object is not an error.

        Raises:
            OSError: the file system refused.
        """
        _remove(self._path(key))


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An object's bytes in an open file (`temporary`; the key's own file for a fresh key):
    `sync` makes them durable, `finish` makes them the object (in that order), `abandon` drops
    them."""

    fd: int
    temporary: str
    target: str

    def sync(self) -> None:
        """Wait until the bytes are on disk (blocking: run it on a worker thread).

        Raises:
            OSError: the file system refused.
        """
        os.fsync(self.fd)

    def finish(self) -> None:
        """Close the file and move it to its key, replacing any object there, atomically.

        Raises:
            OSError: the file system refused (the temporary file is removed).
        """
        os.close(self.fd)
        if self.temporary == self.target:  # written in place
            return
        try:
            _rename_creating_parent(self.temporary, self.target)
        except BaseException:
            _remove(self.temporary)
            raise

    def abandon(self) -> None:
        """Close and remove the file written (a fresh key's own, else the temporary one; an
        object at the key is then untouched)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        _remove(self.temporary)


def _rename_creating_parent(source: str, target: str) -> None:
    _creating_parent(os.rename, source, target)


def _link_creating_parent(source: str, target: str) -> None:
    _creating_parent(os.link, source, target)


def _creating_parent(make: Callable[[str, str], None], source: str, target: str) -> None:
    """`make(source, target)`, making the target's parent folders if they are missing."""
    try:
        make(source, target)
    except FileNotFoundError:
        if not os.path.exists(source):
            raise
        os.makedirs(os.path.dirname(target), exist_ok=True)
        make(source, target)


NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
"""What `link` fails with where the file system will not link this file (the bytes must then be
written again)."""


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
