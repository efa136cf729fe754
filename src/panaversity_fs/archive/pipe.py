"""`ZipPipe`: `stream_zip` on its own thread, fed from the event loop, with bounded buffers.

`stream_zip` is a synchronous generator that pulls member bytes and yields ZIP bytes. Deflate
and CRC-32 release the GIL, so running it on a thread lets it use the second core while the
event loop reads storage and writes the HTTP response. (`async_stream_zip` does the same with
one executor round trip per chunk in each direction and no way to stop a blocked pull; a
measured comparison is in docs/benchmarks.md.)

Members go in from the loop (`put_member`, or `begin_member` / `put_chunk` / `end_member`);
the bytes they hold are owed to the caller's budget and handed back through `release` on the
loop once the ZIP thread has consumed them. ZIP bytes come out of `next_block` through at most
`OUT_SLOTS` blocks in flight. `abort` unblocks and stops the thread at any point.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stream_zip import MemberFile, Method, stream_zip

OUT_BLOCK = 1024 * 1024
"""Size of the ZIP blocks handed to the HTTP response (1 MiB: ~15% faster than 256 KiB, measured)."""

OUT_SLOTS = 4
"""ZIP blocks produced but not yet taken by the response (a slow client stalls the thread)."""

CLOSE_WAIT = 10.0
"""Seconds `wait_closed` waits for an aborted ZIP thread (it stops at its next queue step)."""

FILE_MODE = 0o100644
"""Regular file, rw-r--r--."""


class _Aborted(Exception):
    """The consumer went away; unwind the ZIP thread."""


@dataclass(frozen=True, slots=True)
class _Whole:
    name: str
    modified: datetime
    method: Method
    data: bytes
    cost: int


@dataclass(frozen=True, slots=True)
class _Begin:
    name: str
    modified: datetime
    method: Method


@dataclass(frozen=True, slots=True)
class _Chunk:
    data: bytes
    cost: int


_END = object()
_FINISH = object()
_ABORT = object()
_EOF = object()


class ZipPipe:
    """One archive's ZIP thread and the queues around it."""

    def __init__(self, release: Callable[[int], None], block_size: int = OUT_BLOCK) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = release
        self._block_size = block_size
        self._in: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._out: asyncio.Queue[object] = asyncio.Queue()
        self._slots = threading.Semaphore(OUT_SLOTS)
        self._aborted = False
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="pfs-archive-zip", daemon=True)

    def start(self) -> None:
        """Start the ZIP thread."""
        self._thread.start()

    # -- feeding (event loop) ------------------------------------------------------------

    def put_member(self, name: str, modified: datetime, method: Method, data: bytes, cost: int) -> None:
        """Queue a whole member; `cost` is released once the ZIP thread has consumed it."""
        self._in.put(_Whole(name, modified, method, data, cost))

    def begin_member(self, name: str, modified: datetime, method: Method) -> None:
        """Start a member whose bytes follow as `put_chunk` calls, closed by `end_member`."""
        self._in.put(_Begin(name, modified, method))

    def put_chunk(self, data: bytes, cost: int) -> None:
        """Queue the next bytes of the open member."""
        self._in.put(_Chunk(data, cost))

    def end_member(self) -> None:
        """Close the open member."""
        self._in.put(_END)

    def finish(self) -> None:
        """No more members: write the central directory and end the ZIP."""
        self._in.put(_FINISH)

    def abort(self) -> None:
        """Stop the ZIP thread wherever it is; queued bytes are dropped."""
        self._aborted = True
        self._in.put(_ABORT)
        self._slots.release()

    def fail(self, error: BaseException) -> None:
        """Stop the ZIP thread and make `next_block` raise `error` (the feeder broke)."""
        self.abort()
        self._out.put_nowait(error)

    # -- consuming (event loop) ----------------------------------------------------------

    async def next_block(self) -> bytes | None:
        """Return the next block of ZIP bytes, or None at the end of the ZIP.

        Raises:
            Exception: whatever stopped the ZIP thread (a `stream_zip` error).
        """
        item = await self._out.get()
        self._slots.release()
        if item is _EOF:
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes)
        return item

    async def wait_closed(self) -> None:
        """Wait (at most `CLOSE_WAIT` seconds) until the ZIP thread has ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), CLOSE_WAIT)

    # -- the ZIP thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for block in stream_zip(self._members(), chunk_size=self._block_size):
                self._send(block)
            self._send(_EOF)
        except _Aborted:
            pass
        except Exception as exc:
            with contextlib.suppress(_Aborted):
                self._send(exc)
        finally:
            # RuntimeError: the loop is closed, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_settle, self._done)

    def _members(self) -> Iterator[MemberFile]:
        while True:
            item = self._take()
            if item is _FINISH:
                return
            if isinstance(item, _Whole):
                yield (item.name, item.modified, FILE_MODE, item.method, self._whole(item))
            elif isinstance(item, _Begin):
                yield (item.name, item.modified, FILE_MODE, item.method, self._streamed())
            else:
                raise TypeError(f"archive pipe protocol error: {item!r}")

    def _whole(self, item: _Whole) -> Iterator[bytes]:
        yield item.data
        self._give_back(item.cost)

    def _streamed(self) -> Iterator[bytes]:
        while True:
            item = self._take()
            if item is _END:
                return
            if not isinstance(item, _Chunk):
                raise TypeError(f"archive pipe protocol error: {item!r}")
            yield item.data
            self._give_back(item.cost)

    def _take(self) -> object:
        item = self._in.get()
        if item is _ABORT or self._aborted:
            raise _Aborted
        return item

    def _give_back(self, cost: int) -> None:
        try:
            self._loop.call_soon_threadsafe(self._release, cost)
        except RuntimeError:
            raise _Aborted from None

    def _send(self, item: Any) -> None:
        while not self._slots.acquire(timeout=0.5):
            if self._aborted:
                raise _Aborted
        if self._aborted:
            raise _Aborted
        try:
            self._loop.call_soon_threadsafe(self._out.put_nowait, item)
        except RuntimeError:
            raise _Aborted from None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
