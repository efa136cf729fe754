"""`Reverter`: put back everything one agent changed in a time window.

For each file the agent changed in `[since, until)`, the target is the version just before the
agent's first change in the window (none: the agent created the file, which is deleted). The
file is left alone and reported as a `conflict` when anyone else changed it after that first
change, or anyone changed it after the window. A file already at its target is `unchanged`, so
running a revert again resumes it. Applied changes are ordinary journaled writes and deletes
(history operation `revert`), each compare-and-swapped on the hash just read: a change racing
the revert turns that file into a conflict instead of being overwritten.

Work is paged: one call handles at most `PAGE` files and returns `next_cursor` for the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from panaversity_fs import paging
from panaversity_fs.arguments import check_time
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.history_sql import VersionRow
from panaversity_fs.db.journal_sql import FileKey
from panaversity_fs.errors import Conflict, HashRequired, InvalidArgument, NotFound, PanaversityFSError
from panaversity_fs.files.engine import FileEngine
from panaversity_fs.files.idempotency import Idempotency, keep_result, replayed
from panaversity_fs.files.target import Target
from panaversity_fs.history.results import RevertedFile, RevertReport
from panaversity_fs.history.service import History
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, check_book_id
from panaversity_fs.times import iso

PAGE = 100
"""Files one revert call handles."""

Progress = Callable[[int, int], Awaitable[None]]


class Reverter:
    """Dry runs and applies reverts of one agent's changes."""

    def __init__(self, db: Database, files: FileEngine, history_: History) -> None:
        self._db = db
        self._files = files
        self._history = history_

    async def revert(
        self,
        op: Operation,
        agent_id: object,
        since: object,
        until: object = None,
        book_id: object = None,
        apply: object = False,
        cursor: object = None,
        progress: Progress | None = None,
    ) -> RevertReport:
        """Report (dry run) or apply the revert of one page of the agent's changes.

        Raises:
            InvalidArgument: bad arguments, cursor or reused idempotency key.
            Unavailable: the database failed.
        """
        agent = _agent(agent_id)
        start = check_time("since", since)
        book = check_book_id(book_id) if book_id is not None else None
        if not isinstance(apply, bool):
            raise InvalidArgument("apply must be true or false", field="apply")
        query = paging.query_digest("revert", agent, iso(start), book)
        after: tuple[str, str, str] | None = None
        if cursor is not None:
            position = paging.decode(cursor, query)
            end = check_time("until", paging.text_field(position, "until"))
            after = (
                paging.text_field(position, "b"),
                paging.text_field(position, "u"),
                paging.text_field(position, "p"),
            )
        else:
            end = check_time("until", until) if until is not None else datetime.now(UTC)
        if end <= start:
            raise InvalidArgument("until must be after since", field="until")
        # As given: a replay that omits `until` again is the same request.
        arguments = {
            "agent_id": agent,
            "since": iso(start),
            "until": until,
            "book_id": book,
            "cursor": cursor,
        }
        idem = Idempotency.for_call(op, arguments) if apply else None
        earlier = await replayed(self._db, idem)
        if earlier is not None:
            return RevertReport.model_validate_json(earlier.payload)
        try:
            async with self._db.read() as conn:
                changed = await history.changed_by(conn, agent, start, end, book, after, PAGE + 1)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        more, changed = len(changed) > PAGE, changed[:PAGE]
        files: list[RevertedFile] = []
        for done, (key, first) in enumerate(changed, start=1):
            files.append(await self._one(op, key, first, agent, end, apply))
            if progress is not None:
                await progress(done, len(changed))
        last = changed[-1][0] if more else None
        report = RevertReport(
            agent_id=agent,
            since=iso(start),
            until=iso(end),
            applied=apply,
            files=files,
            counts=dict(Counter(file.action for file in files)),
            next_cursor=paging.encode(
                query, {"until": iso(end), "b": last.book_id, "u": last.user_id, "p": last.path}
            )
            if last is not None
            else None,
        )
        if idem is not None:
            stored = await keep_result(self._db, idem, report.model_dump_json())
            return RevertReport.model_validate_json(stored)
        return report

    async def _one(
        self, op: Operation, key: FileKey, first: int, agent: str, end: datetime, apply: bool
    ) -> RevertedFile:
        try:
            async with self._db.read() as conn:
                rows = await history.since_version(conn, key, first)
                current = (await journal.fetch(conn, key.book_id, key.path, [key.user_id])).get(key.user_id)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        before = rows[0] if rows and rows[0].version < first else None
        ours = [row for row in rows if row.version >= first]
        now_hash = current.sha256 if current is not None else None
        target_hash = before.sha256 if before is not None else None
        user = None if key.user_id == BASE_USER else key.user_id
        agent_hash = next((row.sha256 for row in reversed(ours) if row.agent_id == agent), None)
        file = RevertedFile(
            book_id=key.book_id,
            path=key.path,
            user_id=user,
            action="unchanged",
            to_version=before.version if before is not None and target_hash is not None else None,
            agent_hash=agent_hash,
            current_hash=now_hash,
        )
        if now_hash == target_hash:
            return file
        intruder = _changed_by_others(ours, agent, end)
        if intruder is not None:
            return file.model_copy(update={"action": "conflict", "reason": intruder})
        action = "restore" if target_hash is not None else "delete"
        file = file.model_copy(update={"action": action})
        if not apply:
            return file
        target = Target(key.book_id, key.path, user)
        try:
            if before is not None and target_hash is not None:
                old = await self._history.bytes_of(target, before.version)
                await self._files.write(op, target, old.data, target_hash, now_hash, old.row.content_type)
            else:
                await self._files.delete(op, target, now_hash)
        except (Conflict, HashRequired, NotFound) as raced:
            return file.model_copy(
                update={"action": "conflict", "reason": f"changed during the revert: {raced.code}"}
            )
        except PanaversityFSError as failed:
            return file.model_copy(update={"action": "failed", "reason": failed.message})
        return file


def _changed_by_others(rows: list[VersionRow], agent: str, end: datetime) -> str | None:
    """Why the file must be left alone, or None: a version after the agent's first change made
    by someone else, or made after the window."""
    for row in rows:
        if row.agent_id != agent:
            return f"changed by {row.agent_id} after the agent (version {row.version})"
        if row.created_at >= end:
            return f"changed after the window (version {row.version})"
    return None


def _agent(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise InvalidArgument(
            "agent_id must be the agent id shown by list_versions or query_audit", field="agent_id"
        )
    return value
