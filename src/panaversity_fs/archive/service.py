"""`ArchiveService`: signed archive URLs for the tool, and archive downloads for the route."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from panaversity_fs.app.resources import Resources
from panaversity_fs.archive.builder import MANIFEST_NAME, ArchiveBuilder, ArchiveReport
from panaversity_fs.auth.identity import Caller
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, database_unavailable
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import Forbidden, InvalidArgument
from panaversity_fs.files.manifest import manifest_hash, manifest_text
from panaversity_fs.paths import check_book_id, check_user_id, classify
from panaversity_fs.signing import public_base_url

logger = logging.getLogger(__name__)

Scope = Literal["content", "assets", "all"]

SCOPES: tuple[Scope, ...] = ("content", "assets", "all")

PREFIXES: dict[str, str] = {"content": "content/", "assets": "static/", "all": ""}
"""The book paths each scope covers."""

TOKEN_PURPOSE = "archive"  # noqa: S105 (a signing purpose, not a secret)

RESUME_HINT = (
    "GET the url for a ZIP whose last member, .panaversity/manifest.json, lists every member "
    "(path, size, sha256) and the errors. If it says complete:false, or the download broke "
    "off, GET the url again with &after=<resume_after, or the path of the last member you "
    "received whole> to continue."
)


class ArchiveTicket(BaseModel):
    """A signed, short-lived download URL for a book archive, and what it will contain."""

    book_id: str
    scope: Scope
    user_id: str | None = None
    url: str = Field(description="Absolute URL of the ZIP; valid until expires_at, no other credentials.")
    expires_at: str = Field(description="ISO-8601 UTC time the URL stops working.")
    file_count: int = Field(description="Members at the time of the call (the manifest excluded).")
    total_bytes: int = Field(description="Sum of the members' sizes (uncompressed).")
    manifest_hash: str = Field(
        description="sha256 of the members' `path:sha256` lines in path order, joined by newlines "
        "(as plan_build's manifest hash)."
    )
    manifest_member: str = MANIFEST_NAME
    resume: str = RESUME_HINT


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
class ArchiveDownload:
    """One archive request, its members chosen; `body()` streams the ZIP."""

    resources: Resources
    agent_id: str | None
    report: ArchiveReport
    rows: list[JournalRow]

    @property
    def filename(self) -> str:
        """Download file name: `<book>-<scope>.zip`."""
        return f"{self.report.book_id}-{self.report.scope}.zip"

    async def body(self) -> AsyncIterator[bytes]:
        """Yield the ZIP; log one line and record metrics when it ends, however it ends."""
        resources = self.resources
        metrics = resources.metrics
        report = self.report
        started = time.perf_counter()
        builder = ArchiveBuilder(
            resources.db,
            resources.store,
            self.rows,
            report,
            resources.settings.archive_timeout,
            on_buffered=metrics.archive_memory.inc,
        )
        status = "aborted"
        try:
            async for block in builder.stream():
                yield block
            status = "complete" if report.complete else "partial"
        finally:
            elapsed = time.perf_counter() - started
            metrics.archive_total.labels(metrics.book(report.book_id), report.scope, status).inc()
            metrics.archive_duration.labels(report.scope).observe(elapsed)
            logger.info(
                "archive",
                extra={
                    "agent_id": self.agent_id,
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
    """Archive operations over one server's resources."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def ticket(self, caller: Caller, book_id: object, scope: object, user_id: object) -> ArchiveTicket:
        """Describe the archive of a book as `user_id` sees it and sign a URL to download it.

        Raises:
            InvalidArgument: book_id, scope or user_id is malformed.
            Unavailable: the database failed.
        """
        content = self._resources.content
        with content.audited_read(caller, "get_book_archive", book_id, f"archive:{scope}", user_id):
            book, chosen, user = check_book_id(book_id), check_scope(scope), check_user_id(user_id)
            rows = await self._rows(book, chosen, user, None)
        settings = self._resources.settings
        claims: dict[str, Any] = {"book": book, "scope": chosen, "user": user, "agent": caller.agent_id}
        token, expires = self._resources.signer.sign(TOKEN_PURPOSE, claims, settings.archive_url_ttl)
        url = f"{public_base_url(settings)}/archives/{book}.zip?token={quote(token, safe='')}"
        return ArchiveTicket(
            book_id=book,
            scope=chosen,
            user_id=user,
            url=url,
            expires_at=datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
            file_count=len(rows),
            total_bytes=sum(row.size for row in rows),
            manifest_hash=manifest_hash(manifest_text((row.path, str(row.sha256)) for row in rows)),
        )

    async def download(self, book_id: str, token: str | None, after: str | None) -> ArchiveDownload:
        """Check a download request and choose its members (one journal query).

        Raises:
            Forbidden: no token, or one that is invalid, expired, or made for another book.
            InvalidPath, SchemaViolation, InvalidArgument: `after` is not a canonical book path.
            Unavailable: the database failed.
        """
        if not token:
            raise Forbidden("this URL needs its signed token")
        claims = self._resources.signer.verify(TOKEN_PURPOSE, token)
        if claims.get("book") != book_id:
            raise Forbidden("the signed URL was made for another book")
        try:
            scope = check_scope(claims.get("scope"))
            user = check_user_id(claims.get("user"))
        except InvalidArgument:
            raise Forbidden("the signed URL is invalid") from None
        resume = check_after(after)
        rows = await self._rows(book_id, scope, user, resume)
        agent = claims.get("agent")
        report = ArchiveReport(book_id=book_id, scope=scope, user_id=user, after=resume)
        return ArchiveDownload(self._resources, agent if isinstance(agent, str) else None, report, rows)

    async def _rows(self, book: str, scope: str, user: str | None, after: str | None) -> list[JournalRow]:
        try:
            async with self._resources.db.read() as conn:
                return await journal.view(conn, book, user, prefix=PREFIXES[scope], after=after)
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
