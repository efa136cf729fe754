"""`Lessons`: read, write and delete lesson and summary files (markdown under `content/`).

A thin service on the journaled-file engine: it validates the arguments of the content tools,
encodes the text, and leaves the write protocol to `files.engine`.
"""

from __future__ import annotations

import time

from panaversity_fs.audit.trail import AuditTrail, Subject, outcome_status
from panaversity_fs.config import Settings
from panaversity_fs.errors import InvalidArgument, PanaversityFSError, TooLarge
from panaversity_fs.files.engine import FileEngine
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.results import DeleteOutcome, FileRead, WriteOutcome
from panaversity_fs.files.target import Target, sha256_hex
from panaversity_fs.metrics import Metrics
from panaversity_fs.operation import Operation
from panaversity_fs.paths import check_hash


class Lessons:
    """The content operations: `read_content` (one file), `write_content`, `delete_content`."""

    def __init__(
        self, settings: Settings, files: FileEngine, reader: FileReader, trail: AuditTrail, metrics: Metrics
    ) -> None:
        self._max_bytes = settings.max_content_bytes
        self._files = files
        self._reader = reader
        self._trail = trail
        self._metrics = metrics

    async def read(self, op: Operation, book_id: object, path: object, user_id: object = None) -> FileRead:
        """Return a file's content and hash; with `user_id`, the overlay if there is one.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments.
            NotFound: neither the overlay nor the base file exists.
            Unavailable: the database or storage failed; retry.
            Internal: the stored bytes do not match the journal (run fsck).
        """
        subject = Subject(book_id, path, user_id)
        try:
            target = Target.content(book_id, path, user_id)
            result = await self._reader.read(target)
        except PanaversityFSError as error:
            self._metrics.read_total.labels(outcome_status(error), "none").inc()
            self._trail.note(op, subject, error)
            raise
        self._metrics.read_total.labels("success", result.info.source).inc()
        if target.user_id:
            self._metrics.overlay_latency.observe(time.perf_counter() - op.started)
        self._trail.note_read(op, Subject(target.book_id, target.path, target.user_id), result.info.file_hash)
        return result

    async def write(
        self,
        op: Operation,
        book_id: object,
        path: object,
        content: object,
        expected_hash: object = None,
        user_id: object = None,
    ) -> WriteOutcome:
        """Create a file (no `expected_hash`) or replace it (its current hash). With the
        operation's idempotency key, a call repeating one that committed returns its outcome.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument, TooLarge: bad arguments (a reused key).
            HashRequired: the file exists and no `expected_hash` was given.
            Conflict: `expected_hash` is not the current hash.
            NotFound: `expected_hash` was given for a file that does not exist.
            Unavailable: the database or storage failed; nothing was written.
        """
        try:
            async with self._trail.mutation(op, Subject(book_id, path, user_id)):
                target = Target.content(book_id, path, user_id)
                expected = check_hash(expected_hash)
                data = self._encode(content)
                digest = sha256_hex(data)
                idem = Idempotency.for_call(op, target.arguments(expected, digest))
                replay = await self._files.replayed(idem)
        except PanaversityFSError as error:
            self._metrics.count_write(book_id, error.code)
            raise
        if replay is not None:
            self._metrics.replays.labels(op.name).inc()
            return replay.written()[0]
        return await self._files.write(op, target, data, digest, expected, idem=idem)

    async def delete(
        self,
        op: Operation,
        book_id: object,
        path: object,
        user_id: object = None,
        expected_hash: object = None,
    ) -> DeleteOutcome:
        """Delete a file (an overlay when `user_id` is given; base is never touched then).

        Deleting a missing file succeeds with `existed: false`. With the operation's
        idempotency key, a call repeating one that committed returns its outcome.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: bad arguments (a reused key).
            Conflict: `expected_hash` is given and is not the current hash.
            Unavailable: the database failed; nothing was deleted.
        """
        async with self._trail.mutation(op, Subject(book_id, path, user_id)):
            target = Target.content(book_id, path, user_id)
            expected = check_hash(expected_hash)
            idem = Idempotency.for_call(op, target.arguments(expected))
        return await self._files.delete(op, target, expected, idem)

    def _encode(self, content: object) -> bytes:
        if not isinstance(content, str):
            raise InvalidArgument("content must be a string", field="content")
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("content is not valid UTF-8 (lone surrogate)", field="content") from None
        if len(data) > self._max_bytes:
            raise TooLarge(
                f"content is {len(data)} bytes; the limit is {self._max_bytes}: split the lesson",
                limit=self._max_bytes,
            )
        return data
