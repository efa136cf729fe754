"""Staged copies (PostgreSQL, fs store): an update's bytes are staged without waiting for the
disk, and its one-statement commit keeps a copy of them in `staged_copy` until the publish has
synced the staged file (`db/commit_sql.py`, `files/publisher.py`).

Checked here: the copy exists exactly while the change is pending, and only where it is made;
a staged file (and the version object sharing it) torn by a system crash before its publish is
written again from the copy by recovery; a copy whose change was replaced before its publish
goes once its version's bytes are on disk; a refused swap keeps no copy.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from panaversity_fs import after_response
from panaversity_fs.app.resources import Resources, open_resources
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.schema import staged_copy
from panaversity_fs.errors import Conflict
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.paths import version_key
from panaversity_fs.storage.blobs import STAGING_PREFIX
from tests.conftest import Backends

BOOK = "copy-book"
TARGET = Target(BOOK, "content/01-Copy/01-Staged/01-lesson.md", None)


@pytest.fixture
async def pg(backends: Backends) -> AsyncIterator[Resources]:
    settings = await backends.settings("postgres-fs")
    async with open_resources(settings, background=False) as resources:
        yield resources


async def _write(resources: Resources, text: str, expected: str | None) -> str:
    data = text.encode()
    op = Operation(Caller("copy-agent"), "write_content")
    return (await resources.files.write(op, TARGET, data, sha256_hex(data), expected)).file_hash


async def _copies(resources: Resources) -> dict[str, bytes]:
    async with resources.db.read() as conn:
        rows = await conn.execute(select(staged_copy.c.staging_key, staged_copy.c.data))
        return {str(key): bytes(data) for key, data in rows}


async def _row(resources: Resources) -> journal.JournalRow:
    async with resources.db.read() as conn:
        return (await journal.fetch(conn, BOOK, TARGET.path, [TARGET.key.user_id]))[TARGET.key.user_id]


async def _write_unpublished(resources: Resources, text: str, expected: str) -> str:
    """An update whose writer stops before its publish (the deferred publish is dropped)."""
    async with after_response.deferring():
        written = await _write(resources, text, expected)
        deferred = after_response._current.get()  # pyright: ignore[reportPrivateUsage]
        assert deferred is not None and len(deferred.work) == 1
        deferred.work.clear()
    return written


def _file(resources: Resources, key: str) -> Path:
    return Path(resources.settings.storage_root) / key


async def test_an_update_keeps_its_bytes_copy_exactly_until_its_publish(pg: Resources) -> None:
    created = await _write(pg, "# one\n", None)
    assert await _copies(pg) == {}  # a create syncs its staged file: no copy
    async with after_response.deferring():
        updated = await _write(pg, "# two\n", created)
        row = await _row(pg)
        assert row.publish_pending and row.staging_key is not None
        assert await _copies(pg) == {row.staging_key: b"# two\n"}
    assert await _copies(pg) == {}
    row = await _row(pg)
    assert not row.publish_pending and row.sha256 == updated
    assert (await pg.reader.read(TARGET)).text == "# two\n"
    assert await pg.versions.read(updated) == b"# two\n"


@pytest.mark.parametrize("combo", ["sqlite-fs", "postgres-s3"])
async def test_no_copy_where_the_staged_bytes_are_synced_anyway(backends: Backends, combo: str) -> None:
    """SQLite commits in a write transaction; on s3 a staged object is durable once written."""
    settings = await backends.settings(combo)
    async with open_resources(settings, background=False) as resources:
        created = await _write(resources, "# one\n", None)
        async with after_response.deferring():
            await _write(resources, "# two\n", created)
            assert await _copies(resources) == {}


async def test_recovery_rewrites_a_torn_staged_file_from_its_copy(pg: Resources) -> None:
    created = await _write(pg, "# one\n", None)
    text = "# two, torn by a crash before its publish\n" * 20
    updated = await _write_unpublished(pg, text, created)
    row = await _row(pg)
    assert row.staging_key is not None
    staged = _file(pg, row.staging_key)
    # What a system crash can leave of bytes never synced: a short file. The version object is
    # the same file (a hard link), so it is torn too.
    os.truncate(staged, 7)
    assert _file(pg, version_key(updated)).stat().st_size == 7
    report = await pg.publisher.recover(timedelta(0))
    assert report.published == 1 and report.failed == 0
    assert (await pg.reader.read(TARGET)).text == text
    assert await pg.versions.read(updated) == text.encode()
    assert await _copies(pg) == {}
    assert not (await _row(pg)).publish_pending


async def test_a_replaced_change_s_copy_goes_once_its_version_bytes_are_on_disk(pg: Resources) -> None:
    created = await _write(pg, "# one\n", None)
    replaced = await _write_unpublished(pg, "# two, replaced before its publish\n", created)
    first = (await _row(pg)).staging_key
    assert first is not None
    os.truncate(_file(pg, version_key(replaced)), 3)  # torn with its staged file, as above
    latest = await _write(pg, "# three\n", replaced)
    assert set(await _copies(pg)) == {first}  # the newer change's publish took only its own
    report = await pg.publisher.recover(timedelta(0))
    assert report.copies_removed == 1
    assert await _copies(pg) == {}
    assert await pg.versions.read(replaced) == b"# two, replaced before its publish\n"
    assert (await pg.reader.read(TARGET)).text == "# three\n"
    assert (await _row(pg)).sha256 == latest


async def test_a_refused_swap_keeps_no_copy_and_no_staged_file(pg: Resources) -> None:
    """Another process changed the file: this one's remembered hash lets the write skip its early
    look, the one statement refuses the swap, and the write transaction refuses the call."""
    created = await _write(pg, "# one\n", None)
    async with open_resources(pg.settings, background=False) as other:
        await _write(other, "# two, by another process\n", created)
    with pytest.raises(Conflict):
        await _write(pg, "# three, too late\n", created)
    assert await _copies(pg) == {}
    assert await pg.store.list(STAGING_PREFIX) == []
