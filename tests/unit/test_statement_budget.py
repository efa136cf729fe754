"""A guard on the hot path: the SQL statements one read and one update send, counted exactly.

Most of a call's cost is how many times it talks to the database (docs/benchmarks.md), so the
counts are pinned: a change that adds a statement to the hot path fails here and must say why
(and update the budget). Counting is deterministic: no timing, no load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from panaversity_fs.app.resources import open_resources
from panaversity_fs.config import Settings
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from tests.conftest import PAIRS, Backends

LESSON = "content/01-Budget/01-Hot/01-path.md"
WRITE_BUDGET = {
    # write transaction: (BEGIN), compare-and-swap (a trigger records the version), chain head,
    # audit entry, head update; publish transaction: (BEGIN), row lock, pending flag cleared.
    "sqlite": ["BEGIN", "UPDATE", "SELECT", "INSERT", "UPDATE", "BEGIN", "SELECT", "UPDATE"],
    "postgresql": ["UPDATE", "SELECT", "INSERT", "UPDATE", "SELECT", "UPDATE"],
}
READ_BUDGET = {"sqlite": ["BEGIN", "SELECT"], "postgresql": ["SELECT"]}


@contextmanager
def counted(engine: Any) -> Iterator[list[str]]:
    """The first word of every statement `engine` sends inside the block."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", note)


@pytest.mark.parametrize("combo", PAIRS)
async def test_an_update_and_a_read_send_exactly_their_budgeted_statements(
    backends: Backends, combo: str
) -> None:
    settings: Settings = await backends.settings(combo)
    async with open_resources(settings, background=False) as resources:
        dialect = resources.db.engine.dialect.name
        target = Target("budget-book", LESSON, None)
        first = b"# one\n"
        created = await resources.files.write(
            Operation(Caller("budget"), "write_content"), target, first, sha256_hex(first), None
        )
        await resources.trail.recorder.flush()
        second = b"# two\n"
        with counted(resources.db.engine) as write:
            await resources.files.write(
                Operation(Caller("budget"), "write_content"),
                target,
                second,
                sha256_hex(second),
                created.file_hash,
            )
        with counted(resources.db.engine) as read:
            found = await resources.reader.read(target)
        assert found.text == "# two\n"
        await resources.trail.recorder.flush()
    assert write == WRITE_BUDGET[dialect], write
    assert read == READ_BUDGET[dialect], read
