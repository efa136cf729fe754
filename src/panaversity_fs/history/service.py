"""`History`: list, read, compare and restore the versions of a file.

Version numbers are per file (base file or one user's overlay): the journal's version after
each committed change, a delete included. Bytes come from the version store; a version whose
bytes the upgrade recorded but has not copied yet is served from the file's current object.
"""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass

from panaversity_fs import paging
from panaversity_fs.arguments import check_limit
from panaversity_fs.audit.trail import AuditTrail, Subject
from panaversity_fs.config import Settings
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.history_sql import VersionRow
from panaversity_fs.errors import Internal, InvalidArgument, NotFound
from panaversity_fs.files.engine import FileEngine
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.files.versions import VersionStore, retention_of
from panaversity_fs.history.results import DiffInfo, VersionInfo, VersionList, VersionRead
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, check_hash
from panaversity_fs.storage.blobs import StorageError, storage_failure
from panaversity_fs.times import iso

MAX_VERSIONS_PAGE = 200
DIFF_MAX_BYTES = 200_000
"""Longest diff returned; a longer one is cut at a line and marked `truncated`."""


@dataclass(frozen=True, slots=True)
class OldBytes:
    """One version's row and its verified bytes."""

    row: VersionRow
    data: bytes


def check_version(value: object, name: str = "version") -> int:
    """Return `value` if it is a version number (an integer from 1).

    Raises:
        InvalidArgument: it is not.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be a version number from list_versions", field=name)
    return value


class History:
    """The history operations of single files."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        versions: VersionStore,
        files: FileEngine,
        reader: FileReader,
        trail: AuditTrail,
    ) -> None:
        self._settings = settings
        self._db = db
        self._versions = versions
        self._files = files
        self._reader = reader
        self._trail = trail

    async def list(
        self,
        op: Operation,
        book_id: object,
        path: object,
        user_id: object = None,
        cursor: object = None,
        limit: object = None,
    ) -> VersionList:
        """Return a page of a file's versions, newest first (deleted files keep their history).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments or cursor.
            NotFound: the file has no history.
            Unavailable: the database failed.
        """
        with self._trail.read(op, book_id, path, user_id):
            target = Target.file(book_id, path, user_id)
            size = check_limit(limit, 20, MAX_VERSIONS_PAGE)
            query = paging.query_digest("list_versions", target.book_id, target.path, target.user_id)
            before = paging.int_field(paging.decode(cursor, query), "before") if cursor is not None else None
            try:
                async with self._db.read() as conn:
                    rows = await history.versions(conn, target.key, before, size + 1)
                    floor = await history.kept_floor(conn, target.key, self._settings.history_min_versions)
            except DB_ERRORS as exc:
                raise database_failure(exc) from None
            if not rows and before is None:
                raise NotFound(f"{target.path} has no history: glob_search finds files", path=target.path)
            more, rows = len(rows) > size, rows[:size]
            kept = retention_of(self._settings)
            return VersionList(
                book_id=target.book_id,
                path=target.path,
                user_id=target.user_id,
                versions=[_info(row, kept.keeps(row, floor)) for row in rows],
                next_cursor=paging.encode(query, {"before": rows[-1].version}) if more else None,
            )

    async def read(
        self, op: Operation, book_id: object, path: object, version: object, user_id: object = None
    ) -> tuple[VersionRead, bytes]:
        """Return one version of a file, byte-exact, also after the file was deleted.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            NotFound: no such version, it deleted the file, or it expired.
            Unavailable: the database or storage failed.
            Internal: the version's bytes are lost (run fsck).
        """
        with self._trail.read(op, book_id, path, user_id) as note:
            target = Target.file(book_id, path, user_id)
            old = await self.bytes_of(target, check_version(version))
            note.what = target.path
        sha = old.row.sha256 or ""
        self._trail.note_read(op, Subject(target.book_id, target.path, target.user_id), sha)
        read = VersionRead(
            book_id=target.book_id,
            path=target.path,
            version=old.row.version,
            file_hash=sha,
            size=len(old.data),
            at=iso(old.row.created_at),
            source=target.source,
            user_id=target.user_id,
        )
        return read, old.data

    async def bytes_of(self, target: Target, number: int) -> OldBytes:
        """Return version `number` of `target` with its verified bytes.

        Raises:
            NotFound: no such version, it deleted the file, or it expired.
            Unavailable: the database or storage failed.
            Internal: the version's bytes are lost (run fsck).
        """
        row, floor = await self._row(target, number)
        if row.sha256 is None:
            raise NotFound(
                f"version {number} of {target.path} is its deletion: read an earlier version",
                path=target.path,
            )
        return await self._retained(target, row, floor)

    async def _row(self, target: Target, number: int) -> tuple[VersionRow, int | None]:
        """Version `number` of `target` and its file's `kept_floor` (NotFound if no such version)."""
        try:
            async with self._db.read() as conn:
                row = await history.version(conn, target.key, number)
                floor = await history.kept_floor(conn, target.key, self._settings.history_min_versions)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        if row is None:
            raise NotFound(
                f"{target.path} has no version {number}: list_versions lists them", path=target.path
            )
        return row, floor

    async def _retained(self, target: Target, row: VersionRow, floor: int | None) -> OldBytes:
        """`row` with its verified bytes, unless retention let it expire (NotFound)."""
        if not retention_of(self._settings).keeps(row, floor):
            raise NotFound(
                f"version {row.version} of {target.path} expired (available: false)", path=target.path
            )
        return OldBytes(row, await self._verified(target, row))

    async def _verified(self, target: Target, row: VersionRow) -> bytes:
        sha = row.sha256 or ""
        try:
            data = await self._versions.read(sha)
            if data is None and not row.captured:
                rows = await journal.look_up(self._db, row.book_id, row.path, [row.user_id])
                current = rows.get(row.user_id)
                if current is not None and current.sha256 == sha:
                    data = await self._reader.verified_bytes(current)
        except StorageError as exc:
            raise storage_failure(exc) from None
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        if data is None:
            raise Internal(
                f"the bytes of version {row.version} of {target.path} are missing; an operator should run fsck"
            )
        return data

    async def restore(
        self,
        op: Operation,
        book_id: object,
        path: object,
        version: object,
        expected_hash: object = None,
        user_id: object = None,
    ) -> WriteOutcome:
        """Write version `version` back as the file's newest version, under the write contract.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (a reused key).
            NotFound: no such version, or it expired.
            HashRequired: the file exists and no `expected_hash` was given.
            Conflict: `expected_hash` is not the current hash.
            Unavailable: the database or storage failed; nothing was written.
        """
        async with self._trail.mutation(op, Subject(book_id, path, user_id)):
            target = Target.file(book_id, path, user_id)
            expected = check_hash(expected_hash)
            number = check_version(version)
            old = await self.bytes_of(target, number)
            arguments = target.arguments(expected, old.row.sha256) | {"version": number}
            idem = Idempotency.for_call(op, arguments)
            replay = await self._files.replayed(idem)
        if replay is not None:
            return replay.written()[0]
        sha = old.row.sha256 or ""
        return await self._files.write(op, target, old.data, sha, expected, old.row.content_type, idem)

    async def diff(
        self,
        op: Operation,
        book_id: object,
        path: object,
        from_version: object = None,
        to_version: object = None,
        user_id: object = None,
        against_base: object = False,
    ) -> tuple[DiffInfo, str]:
        """Return a unified diff between two versions of a file (default: the newest and the
        one before it), or of a user's overlay against the current base.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (an asset: binary).
            NotFound: a version does not exist or expired; no overlay or base to compare.
            Unavailable: the database or storage failed.
        """
        with self._trail.read(op, book_id, path, user_id):
            target = Target.file(book_id, path, user_id)
            if target.path.startswith("static/"):
                raise InvalidArgument(
                    "assets are binary: compare their file_hash in list_versions", field="path"
                )
            if against_base is True:
                info, old, new = await self._against_base(target)
            elif against_base is False:
                info, old, new = await self._between(target, from_version, to_version)
            else:
                raise InvalidArgument("against_base must be true or false", field="against_base")
            text, truncated = await asyncio.to_thread(_unified, target.path, info, old, new)
            return info.model_copy(update={"truncated": truncated, "identical": old == new}), text

    async def _between(
        self, target: Target, from_version: object, to_version: object
    ) -> tuple[DiffInfo, bytes, bytes]:
        try:
            async with self._db.read() as conn:
                newest = await history.newest(conn, target.key)
                to_number = newest if to_version is None else check_version(to_version, "to_version")
                if to_number is None:
                    raise NotFound(f"{target.path} has no history: glob_search finds files", path=target.path)
                if from_version is None:
                    earlier = await history.versions(conn, target.key, to_number, 1)
                    if not earlier:
                        raise NotFound(
                            f"version {to_number} of {target.path} is its first: nothing to compare it with",
                            path=target.path,
                        )
                    from_number = earlier[0].version
                else:
                    from_number = check_version(from_version, "from_version")
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        old_hash, old = await self._side(target, from_number)
        new_hash, new = await self._side(target, to_number)
        info = DiffInfo(
            book_id=target.book_id,
            path=target.path,
            user_id=target.user_id,
            from_version=from_number,
            to_version=to_number,
            from_hash=old_hash,
            to_hash=new_hash,
        )
        return info, old, new

    async def _side(self, target: Target, number: int) -> tuple[str | None, bytes]:
        """A version's hash and bytes; a deletion compares as an empty file with no hash."""
        row, floor = await self._row(target, number)
        if row.sha256 is None:
            return None, b""
        return row.sha256, (await self._retained(target, row, floor)).data

    async def _against_base(self, target: Target) -> tuple[DiffInfo, bytes, bytes]:
        if target.user_id is None:
            raise InvalidArgument("against_base compares a user's overlay: pass user_id", field="user_id")
        base = await self._reader.read(Target(target.book_id, target.path, None))
        try:
            rows = await journal.look_up(self._db, target.book_id, target.path, [target.user_id])
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        row = rows.get(target.user_id)
        if row is None or not row.exists or row.user_id == BASE_USER:
            raise NotFound(
                f"{target.user_id} has no overlay of {target.path}: nothing to compare", path=target.path
            )
        found = await self._reader.follow(target.book_id, target.path, target.user_id, row)
        if found is None:
            raise NotFound(f"{target.user_id} has no overlay of {target.path}", path=target.path)
        overlay_row, overlay = found
        info = DiffInfo(
            book_id=target.book_id,
            path=target.path,
            user_id=target.user_id,
            to_version=overlay_row.version,
            from_hash=base.info.file_hash,
            to_hash=overlay_row.sha256,
        )
        return info, base.text.encode("utf-8", errors="surrogateescape"), overlay


def _info(row: VersionRow, available: bool) -> VersionInfo:
    return VersionInfo(
        version=row.version,
        file_hash=row.sha256,
        size=row.size,
        operation=row.operation,
        agent_id=row.agent_id,
        at=iso(row.created_at),
        available=available,
    )


def _unified(path: str, info: DiffInfo, old: bytes, new: bytes) -> tuple[str, bool]:
    """The unified diff of two texts, cut at a line boundary after `DIFF_MAX_BYTES`."""
    before = f"{path}@{'base' if info.from_version is None else info.from_version}"
    after = f"{path}@{info.to_version}"
    lines = difflib.unified_diff(
        old.decode("utf-8", errors="replace").splitlines(keepends=True),
        new.decode("utf-8", errors="replace").splitlines(keepends=True),
        fromfile=before,
        tofile=after,
    )
    out: list[str] = []
    used = 0
    for line in lines:
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        used += len(line.encode("utf-8"))
        if used > DIFF_MAX_BYTES:
            return "".join(out), True
        out.append(line)
    return "".join(out), False
