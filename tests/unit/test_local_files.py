"""The fs backend's hot-path calls (plain system calls, `storage.local`) keep OpenDAL's layout and
guarantees: what one writes the other reads and lists, nothing is visible before its rename, a
failed call leaves nothing behind, and a key outside the root is refused."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from panaversity_fs.config import Settings
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError
from panaversity_fs.storage.local import TMP_FOLDER


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    settings = Settings(storage_backend="fs", storage_root=tmp_path / "store")
    blobs = BlobStore.from_settings(settings)
    assert blobs.local is not None
    yield blobs
    blobs.close()


def _tmp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / TMP_FOLDER))


async def test_local_writes_are_opendals_objects_and_the_other_way_round(
    store: BlobStore, tmp_path: Path
) -> None:
    await store.write("books/b/content/01-a/01-b/01-c.md", b"local bytes")
    operator = store._operator  # pyright: ignore[reportPrivateUsage]
    assert bytes(operator.read("books/b/content/01-a/01-b/01-c.md")) == b"local bytes"
    operator.write("books/b/static/img/x.png", b"opendal bytes")
    assert await store.read("books/b/static/img/x.png") == b"opendal bytes"
    listed = [(blob.key, blob.size) for blob in await store.list("books/b/")]
    assert listed == [("books/b/content/01-a/01-b/01-c.md", 11), ("books/b/static/img/x.png", 13)]
    assert _tmp_files(tmp_path / "store") == []


async def test_ranges_read_what_the_object_has(store: BlobStore) -> None:
    await store.write("books/b/r.md", b"0123456789")
    assert await store.read("books/b/r.md", 10) == b"0123456789"
    assert await store.read_range("books/b/r.md", 3, 4) == b"3456"
    assert await store.read_range("books/b/r.md", 8, 100) == b"89"
    assert await store.read_range("books/b/r.md", 10, 5) == b""
    assert await store.read_range("books/b/r.md", 50, 5) == b""
    await store.write("books/b/empty.md", b"")
    assert await store.read("books/b/empty.md") == b""
    with pytest.raises(BlobNotFound):
        await store.read("books/b/missing.md", 10)
    with pytest.raises(BlobNotFound):
        await store.read("books/b/missing.md")


async def test_publish_moves_into_new_folders_and_replaces(store: BlobStore, tmp_path: Path) -> None:
    await store.write(".pfs/staging/one", b"first")
    await store.publish(".pfs/staging/one", "books/b/deep/er/still/x.md")
    await store.write(".pfs/staging/two", b"second")
    await store.publish(".pfs/staging/two", "books/b/deep/er/still/x.md")
    assert await store.read("books/b/deep/er/still/x.md") == b"second"
    assert not await store.exists(".pfs/staging/one")
    with pytest.raises(BlobNotFound):
        await store.publish(".pfs/staging/one", "books/b/deep/er/still/x.md")


async def test_deleting_is_idempotent(store: BlobStore) -> None:
    await store.write("books/b/d.md", b"x")
    await store.delete("books/b/d.md")
    await store.delete("books/b/d.md")
    assert not await store.exists("books/b/d.md")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "books/../../escape", "books//b", "books/./b", "books/b/"]
)
async def test_keys_outside_the_root_are_refused_and_touch_nothing(
    store: BlobStore, tmp_path: Path, key: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(StorageError) as refused:
        await store.write(key, b"x")
    assert not isinstance(refused.value, BlobNotFound)
    with pytest.raises(StorageError):
        await store.read(key, 1)
    with pytest.raises(StorageError):
        await store.publish(".pfs/staging/none", key)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


async def test_a_failed_write_leaves_no_temporary_file_and_the_old_bytes(
    store: BlobStore, tmp_path: Path
) -> None:
    await store.write("books/b/file.md", b"old")
    # A key under an existing file cannot be created: the write fails after staging its bytes.
    with pytest.raises(StorageError):
        await store.write("books/b/file.md/child.md", b"new")
    assert _tmp_files(tmp_path / "store") == []
    assert await store.read("books/b/file.md") == b"old"


async def test_concurrent_writes_of_one_key_leave_one_whole_version(store: BlobStore) -> None:
    versions = [bytes([65 + i]) * 50_000 for i in range(8)]
    await asyncio.gather(*(store.write("books/b/race.md", data) for data in versions))
    assert await store.read("books/b/race.md") in versions


@pytest.mark.parametrize("bytes_of_the_object", ["the staged bytes (a link)", "other bytes (a file)"])
@pytest.mark.parametrize("when", ["during the fsync", "as the fsync returns"])
async def test_an_abandoned_write_leaves_nothing(
    store: BlobStore, tmp_path: Path, when: str, bytes_of_the_object: str
) -> None:
    """Cancelled while its fsync runs on an I/O thread, or while that thread finishes: the
    temporary files are closed and removed once the thread is done with them, and the object
    exists exactly when the write returned (whether it would be a link to the staged file or
    a file of its own)."""
    descriptors = len(os.listdir("/proc/self/fd"))
    big = b"a" * (8 * 1024 * 1024)  # an fsync of milliseconds
    other = big if bytes_of_the_object.endswith("(a link)") else b"b" * len(big)
    outcomes: dict[str, bool] = {}
    for attempt in range(5):
        staging = f".pfs/staging/s{attempt}"  # written in place, like a write's staged bytes
        write = asyncio.create_task(
            store.write_all([(staging, big), ("books/b/a.md", other)], fresh={staging})
        )
        await asyncio.sleep(0.002)  # the temporary files are written; the fsync is running
        write.cancel()
        if when == "as the fsync returns":
            # Hold the loop after the cancellation reached the write: the thread finishes
            # meanwhile, before the write learns that it was cancelled.
            asyncio.get_running_loop().call_soon(time.sleep, 0.3)
        try:
            await write
            outcomes[staging] = True
        except asyncio.CancelledError:
            outcomes[staging] = False
        assert (tmp_path / "store/books/b/a.md").exists() == outcomes[staging]
        await store.delete("books/b/a.md")
    store.close()  # waits for the I/O threads, and so for the clean-up they run
    assert _tmp_files(tmp_path / "store") == []
    for staging, completed in outcomes.items():
        assert (tmp_path / "store" / staging).exists() == completed
    assert len(os.listdir("/proc/self/fd")) == descriptors


async def test_a_fresh_key_is_written_in_place_and_never_over_an_object(
    store: BlobStore, tmp_path: Path
) -> None:
    await store.write_all(
        [(".pfs/staging/k", b"first"), ("books/b/v.md", b"first")], fresh={".pfs/staging/k"}
    )
    assert await store.read(".pfs/staging/k") == b"first"
    with pytest.raises(StorageError):
        await store.write_all([(".pfs/staging/k", b"second")], fresh={".pfs/staging/k"})
    assert await store.read(".pfs/staging/k") == b"first"
    assert _tmp_files(tmp_path / "store") == []


async def test_the_same_bytes_for_two_keys_are_one_file(store: BlobStore, tmp_path: Path) -> None:
    """A write's staged bytes and its version are the same bytes: written and synced once, the
    version a hard link to the staged file (replacing an object there, or in a new folder)."""
    root = tmp_path / "store"
    data = b"shared bytes"
    await store.write("books/b/v.md", b"older object")
    await store.write_all([(".pfs/staging/s", data), ("books/b/v.md", data)], fresh={".pfs/staging/s"})
    staged, kept = os.stat(root / ".pfs/staging/s"), os.stat(root / "books/b/v.md")
    assert (kept.st_ino, kept.st_nlink) == (staged.st_ino, 2)
    await store.publish(".pfs/staging/s", "books/b/final.md")
    assert await store.read("books/b/v.md") == await store.read("books/b/final.md") == data
    await store.write_all([(".pfs/staging/t", data), ("books/b/new/v.md", data)], fresh={".pfs/staging/t"})
    assert os.stat(root / "books/b/new/v.md").st_ino == os.stat(root / ".pfs/staging/t").st_ino
    assert _tmp_files(root) == []


async def test_where_the_file_system_will_not_link_the_bytes_are_written_again(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    root = tmp_path / "store"
    data = b"copied bytes"
    await store.write_all([(".pfs/staging/s", data), ("books/b/v.md", data)], fresh={".pfs/staging/s"})
    assert os.stat(root / "books/b/v.md").st_ino != os.stat(root / ".pfs/staging/s").st_ino
    assert await store.read("books/b/v.md") == await store.read(".pfs/staging/s") == data
    assert _tmp_files(root) == []


async def test_a_refused_link_abandons_the_whole_write(store: BlobStore, tmp_path: Path) -> None:
    await store.write("books/b/blocker", b"a file where a folder would be")
    data = b"never stored"
    with pytest.raises(StorageError):
        await store.write_all(
            [(".pfs/staging/u", data), ("books/b/blocker/v.md", data)], fresh={".pfs/staging/u"}
        )
    assert not (tmp_path / "store/.pfs/staging/u").exists()
    assert _tmp_files(tmp_path / "store") == []
