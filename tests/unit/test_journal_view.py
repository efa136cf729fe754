"""`journal.repository.view`: the overlay-resolved, byte-ordered, paged listing every book-wide
feature is built on, checked against a model on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.db.journal_sql import Author, FileKey
from panaversity_fs.db.schema import file_version
from panaversity_fs.paths import BASE_USER

BOOK = "view-book"
# Sorting traps: '_' sorts between upper and lower case, '-' before digits; 'Z' < '_' < 'a'.
PATHS = (
    "content/01-A/01-B/01-a.md",
    "content/01-A/01-B/01-a.summary.md",
    "content/01-A/01-B/02-b.md",
    "content/01-A/02-C/01-Z.md",
    "content/01-A_x/01-B/01-a.md",
    "content/02-Z/01-B/01-a.md",
    "static/img/a_b.png",
    "static/img/a-b.png",
    "static/images/A.png",
)
USERS = (BASE_USER, "Zed", "alice", "0user")

Row = tuple[str, str, bool]
"""(path, user_id, live)"""

rows_strategy = st.lists(
    st.tuples(st.sampled_from(PATHS), st.sampled_from(USERS), st.booleans()),
    unique_by=lambda r: (r[0], r[1]),
    max_size=24,
)

AUTHOR = Author("journal-view-test")


def _digest(path: str, user: str) -> str:
    return hashlib.sha256(f"{user}/{path}".encode()).hexdigest()


def model(rows: list[Row], viewer: str | None, prefix: str) -> list[tuple[str, str]]:
    """What `view` must return: (path, owner) per visible path, byte order."""
    visible: dict[str, str] = {}
    for path, user, live in rows:
        if not live or not path.startswith(prefix):
            continue
        if user == BASE_USER:
            visible.setdefault(path, BASE_USER)
        elif user == viewer:
            visible[path] = user
    return sorted(visible.items(), key=lambda item: item[0].encode())


async def _load(db: Database, rows: list[Row]) -> None:
    now = datetime.now(UTC)
    async with db.write() as tx:
        conn = tx.conn
        for path, user, live in rows:
            key = FileKey(BOOK, path, user)
            await journal.create(conn, key, _digest(path, user), 1, f"k-{user}-{path}", now, "fs", AUTHOR)
            if not live:
                await journal.tombstone(conn, key, now, AUTHOR)


async def _clear(db: Database) -> None:
    async with db.write() as tx:
        conn = tx.conn
        await conn.execute(journal.file_journal.delete())
        await conn.execute(file_version.delete())


async def _paged(db: Database, viewer: str | None, prefix: str, limit: int) -> list[Any]:
    seen: list[Any] = []
    after: str | None = None
    while True:
        async with db.read() as conn:
            page = await journal.view(conn, BOOK, viewer, prefix, after, limit)
        assert len(page) <= limit
        if not page:
            return seen
        seen.extend(page)
        after = page[-1].path


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=rows_strategy,
    viewer=st.sampled_from((None, "Zed", "alice", "0user")),
    prefix=st.sampled_from(("", "content/", "content/01-A/", "content/01-A_", "static/img/")),
    limit=st.integers(1, 5),
)
async def test_view_matches_the_model_paged_and_unpaged(
    db: Database, rows: list[Row], viewer: str | None, prefix: str, limit: int
) -> None:
    await _clear(db)
    await _load(db, rows)
    expected = model(rows, viewer, prefix)
    async with db.read() as conn:
        whole = await journal.view(conn, BOOK, viewer, prefix)
    assert [(r.path, r.user_id) for r in whole] == expected
    assert all(r.sha256 == _digest(r.path, r.user_id) for r in whole)
    paged = await _paged(db, viewer, prefix, limit)
    assert [(r.path, r.user_id) for r in paged] == expected


async def test_view_treats_like_wildcards_in_the_prefix_literally(db: Database) -> None:
    await _load(db, [("content/01-A/01-B/01-a.md", BASE_USER, True), ("static/img/a_b.png", BASE_USER, True)])
    async with db.read() as conn:
        assert [r.path for r in await journal.view(conn, BOOK, None, "static/img/a_")] == [
            "static/img/a_b.png"
        ]
        assert await journal.view(conn, BOOK, None, "content/01%") == []
        assert await journal.view(conn, BOOK, None, "static/img/a-") == []
        assert await journal.view(conn, "other-book", None) == []
