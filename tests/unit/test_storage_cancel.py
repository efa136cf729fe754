"""A caller cancelled while its storage call finishes (its deadline passing as the I/O thread
answers) is cancelled, and the call's `undo` runs: the answer is never half-taken."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from panaversity_fs.storage.blobs import BlobStore
from tests.conftest import Backends


async def test_a_caller_cancelled_as_its_call_answers_is_cancelled_and_the_call_undone(
    backends: Backends,
) -> None:
    store = BlobStore.from_settings(await backends.settings("sqlite-fs"))
    release = threading.Event()
    undone = threading.Event()

    def call() -> bytes:
        release.wait(10)
        return b"answer"

    try:
        caller = asyncio.create_task(store.run_file(call, undo=undone.set))
        await asyncio.sleep(0.05)  # the caller now waits for the I/O thread
        release.set()
        # Hold the event loop while the thread answers, so that its answer and the
        # cancellation arrive in the same turn of the loop.
        time.sleep(0.2)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await asyncio.to_thread(undone.wait, 5), "the call's undo must run"
    finally:
        store.close()
