"""Every storage call is counted once as `panaversityfs_storage_calls_total{result}`: a write's
calls on the event loop and on the I/O threads alike, a missing object as an answer, a refused
key as an error."""

from __future__ import annotations

import pytest

from panaversity_fs.app.resources import open_resources
from panaversity_fs.config import Settings
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.storage.blobs import BlobNotFound, StorageError
from tests.conftest import Backends

LESSON = "content/01-Metrics/01-Storage/01-calls.md"


async def test_storage_calls_are_counted_by_result(backends: Backends) -> None:
    settings: Settings = await backends.settings("sqlite-fs")
    async with open_resources(settings, background=False) as resources:
        calls = resources.metrics.storage_calls

        def counted() -> tuple[float, float]:
            return calls.labels("ok")._value.get(), calls.labels("error")._value.get()  # pyright: ignore[reportPrivateUsage]

        before = counted()
        text = b"# counted\n"
        await resources.files.write(
            Operation(Caller("metrics"), "write_content"),
            Target("metrics-book", LESSON, None),
            text,
            sha256_hex(text),
            None,
        )
        # the staging file filled, one wait for its fsync, the version's link to it, its close, the publish
        assert counted() == (before[0] + 5, before[1])
        with pytest.raises(BlobNotFound):
            await resources.store.read("books/metrics-book/missing.md", 10)
        assert counted() == (before[0] + 6, before[1])
        with pytest.raises(StorageError):
            await resources.store.read("books/../escape.md", 10)
        assert counted() == (before[0] + 6, before[1] + 1)
