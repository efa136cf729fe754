"""`ArchiveService`: signed archive URLs for the tool, and archive downloads for the route."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from panaversity_fs.archive.builder import ArchiveBuilder, ArchiveReport
from panaversity_fs.arguments import check_time
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.config import Settings
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import Forbidden, InvalidArgument, unknown_book
from panaversity_fs.files.manifest import manifest_hash, manifest_text
from panaversity_fs.files.versions import check_as_of
from panaversity_fs.limits import StreamSlots
from panaversity_fs.metrics import Metrics
from panaversity_fs.operation import Operation
from panaversity_fs.paths import check_book_id, check_user_id, classify
from panaversity_fs.signing import UrlSigner, public_base_url
from panaversity_fs.storage.blobs import BlobStore
from panaversity_fs.times import from_unix, iso

logger = logging.getLogger(__name__)

Scope = Literal["content", "assets", "all"]

SCOPES: tuple[Scope, ...] = ("content", "assets", "all")

PREFIXES: dict[str, str] = {"content": "content/", "assets": "static/", "all": ""}
"""The book paths each scope covers."""

TOKEN_PURPOSE = "archive"  # noqa: S105 (a signing purpose, not a secret)

ANONYMOUS_URL = "(signed url)"
"""The stream-slot holder of a signed URL that names no agent."""


class ArchiveTicket(BaseModel):
    """A signed, short-lived download URL for a book archive, and what it will contain."""

    book_id: str
    scope: Scope
    user_id: str | None = None
    as_of: str | None = None
    url: str = Field(description="Absolute URL of the ZIP; valid until expires_at, no other credentials.")
    expires_at: str = Field(description="ISO-8601 UTC time the URL stops working.")
    file_count: int = Field(description="Members at the time of the call (the manifest excluded).")
    total_bytes: int = Field(description="Sum of the members' sizes (uncompressed).")
    manifest_hash: str = Field(
        description="sha256 of the members' `path:sha256` lines in path order, joined by newlines "
        "(as plan_build's manifest hash)."
    )


def check_scope(scope: object) -> Scope:
    """Return `scope` if it is `content`, `assets` or `all`.

    Raises:
        InvalidArgument: it is anything else.
    """
    for known in SCOPES:
        if scope == known:
            return known
    raise InvalidArgument("scope must be content, assets or all", field="scope")


def check_after(after: object) -> str | None:
    """Return a resume point if it is a canonical book path (or None).

    Raises:
        InvalidPath, SchemaViolation: it is not a book path.
        InvalidArgument: it is not in canonical (NFC) form.
    """
    if after is None:
        return None
    path = classify(after).path
    if path != after:
        raise InvalidArgument("after must be a book path in canonical form", field="after")
    return path


@dataclass(frozen=True, slots=True)
class ArchiveRequest:
    """What one download asks for: a book as one user (or nobody) sees it, for one agent."""

    book_id: str
    scope: Scope
    user_id: str | None
    agent_id: str | None
    as_of: datetime | None = None
    """The book as it was then (from retained versions), or as it is now."""


@dataclass(frozen=True, slots=True)
class ArchiveDownload:
    """One archive being sent: its members chosen, its stream slot held; `body()` streams the ZIP."""

    request: ArchiveRequest
    builder: ArchiveBuilder
    metrics: Metrics
    release: Callable[[], None]
    """Gives the stream slot back; the response calls it when it ends, however it ends."""

    @property
    def report(self) -> ArchiveReport:
        """What the archive contains (final once the body is exhausted)."""
        return self.builder.report

    @property
    def filename(self) -> str:
        """Download file name: `<book>-<scope>.zip`."""
        return f"{self.request.book_id}-{self.request.scope}.zip"

    async def body(self) -> AsyncIterator[bytes]:
        """Yield the ZIP; log one line and record metrics when it ends, however it ends."""
        metrics = self.metrics
        report = self.report
        started = time.perf_counter()
        status = "aborted"
        try:
            async for block in self.builder.stream():
                yield block
            status = "complete" if report.complete else "partial"
        finally:
            elapsed = time.perf_counter() - started
            metrics.archive_total.labels(metrics.book(report.book_id), report.scope, status).inc()
            metrics.archive_duration.labels(report.scope).observe(elapsed)
            logger.info(
                "archive",
                extra={
                    "agent_id": self.request.agent_id,
                    "book_id": report.book_id,
                    "scope": report.scope,
                    "user_id": report.user_id,
                    "after": report.after,
                    "status": status,
                    "files": len(report.members),
                    "bytes": report.total_bytes,
                    "zip_bytes": report.zip_bytes,
                    "errors": len(report.errors),
                    "resume_after": report.resume_after,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


class ArchiveService:
    """Signed archive URLs for `get_book_archive`, and the archives they download."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        signer: UrlSigner,
        trail: AuditTrail,
        metrics: Metrics,
        slots: StreamSlots,
    ) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._signer = signer
        self._trail = trail
        self._metrics = metrics
        self._slots = slots

    async def ticket(
        self, op: Operation, book_id: object, scope: object, user_id: object, as_of: object = None
    ) -> ArchiveTicket:
        """Describe the archive of a book as `user_id` sees it (now, or at `as_of`) and sign a URL
        to download it.

        Raises:
            InvalidArgument: book_id, scope, user_id or as_of is malformed (as_of: or too old).
            NotFound: the book has no files (for `user_id`: neither shared ones nor that user's).
            Unavailable: the database failed.
        """
        with self._trail.read(op, book_id, f"archive:{scope}", user_id):
            book, chosen, user = check_book_id(book_id), check_scope(scope), check_user_id(user_id)
            moment = check_as_of(as_of, self._settings)
            rows = await self._rows(book, chosen, user, None, moment, must_exist=True)
        claims: dict[str, Any] = {"book": book, "scope": chosen, "user": user, "agent": op.agent_id}
        if moment is not None:
            claims["as_of"] = iso(moment)
        token, expires = self._signer.sign(TOKEN_PURPOSE, claims, self._settings.archive_url_ttl)
        url = f"{public_base_url(self._settings)}/archives/{book}.zip?token={quote(token, safe='')}"
        return ArchiveTicket(
            book_id=book,
            scope=chosen,
            user_id=user,
            as_of=iso(moment) if moment is not None else None,
            url=url,
            expires_at=from_unix(expires),
            file_count=len(rows),
            total_bytes=sum(row.size for row in rows),
            manifest_hash=manifest_hash(manifest_text((row.path, str(row.sha256)) for row in rows)),
        )

    def verify_url(self, book_id: str, token: str | None) -> ArchiveRequest:
        """The request a signed archive URL carries.

        Raises:
            Forbidden: no token, or one that is invalid, expired, or made for another book.
        """
        if not token:
            raise Forbidden("this URL needs its signed token")
        claims = self._signer.verify(TOKEN_PURPOSE, token)
        if claims.get("book") != book_id:
            raise Forbidden("the signed URL was made for another book")
        try:
            scope = check_scope(claims.get("scope"))
            user = check_user_id(claims.get("user"))
            moment = claims.get("as_of")
            as_of = check_time("as_of", moment) if moment is not None else None
        except InvalidArgument:
            raise Forbidden("the signed URL is invalid") from None
        agent = claims.get("agent")
        return ArchiveRequest(book_id, scope, user, agent if isinstance(agent, str) else None, as_of)

    async def open(self, request: ArchiveRequest, after: object) -> ArchiveDownload:
        """Choose the members of `request`'s archive after `after` (one journal query) and take
        a stream slot for it.

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument: `after` is not a canonical book path.
            RateLimited: this agent streams as many archives as it may.
            Unavailable: the database failed, or every stream slot is taken.
        """
        resume = check_after(after)
        rows = await self._rows(request.book_id, request.scope, request.user_id, resume, request.as_of)
        release = self._slots.take(request.agent_id or ANONYMOUS_URL)
        report = ArchiveReport(
            book_id=request.book_id, scope=request.scope, user_id=request.user_id, after=resume
        )
        builder = ArchiveBuilder(
            self._db,
            self._store,
            rows,
            report,
            self._settings.archive_timeout,
            on_buffered=self._metrics.archive_memory.inc,
            follow_changes=request.as_of is None,
        )
        return ArchiveDownload(request, builder, self._metrics, release)

    async def _rows(
        self,
        book: str,
        scope: str,
        user: str | None,
        after: str | None,
        as_of: datetime | None = None,
        must_exist: bool = False,
    ) -> list[JournalRow]:
        try:
            async with self._db.read() as conn:
                if must_exist and not await journal.book_exists(conn, book, user):
                    raise unknown_book(book)
                if as_of is not None:
                    return await history.view_as_of(conn, book, user, as_of, PREFIXES[scope], after)
                return await journal.view(conn, book, user, prefix=PREFIXES[scope], after=after)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
