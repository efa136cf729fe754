"""HTTP route: `GET /archives/{book_id}.zip?token=...&after=...` streams a book archive.

Instead of the signed `token`, a request may carry `Authorization: Bearer <JWT>` (auth on) and
name the archive with `scope=content|assets|all` (default `content`) and `user_id=`; the token
must allow `get_book_archive` for that book and user (same rules as the tool).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from panaversity_fs.app.resources import Resources, ServerState
from panaversity_fs.archive.service import TOKEN_PURPOSE, ArchiveService, check_scope
from panaversity_fs.auth.access import authorize
from panaversity_fs.auth.identity import Caller, caller_from_request
from panaversity_fs.errors import PanaversityFSError, Unauthenticated
from panaversity_fs.paths import check_book_id, check_user_id

logger = logging.getLogger(__name__)

ANONYMOUS_URL = "(signed url)"
"""The download-slot holder of a signed URL that names no agent (URLs made before agents were
recorded in them)."""

HTTP_STATUS = {
    "FORBIDDEN": 403,
    "UNAUTHENTICATED": 401,
    "INVALID_PATH": 400,
    "SCHEMA_VIOLATION": 400,
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "RATE_LIMITED": 429,
    "UNAVAILABLE": 503,
}
"""HTTP status of each error code a download request can be refused with (others: 500)."""


def error_response(error: PanaversityFSError) -> Response:
    """The JSON error body (`{"error": CODE, "message": ...}`) with its HTTP status."""
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    retry_after = error.details.get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(error.to_dict(), status_code=HTTP_STATUS.get(error.code, 500), headers=headers)


def bearer_token(resources: Resources, caller: Caller | None, book_id: str, request: Request) -> str:
    """Turn a bearer-authorised archive request into the signed token a ticket would carry.

    Raises:
        Unauthenticated: no verified bearer token.
        Forbidden: the token does not allow this book or user (or lacks `fs:read`).
        InvalidArgument: `scope`, `user_id` or the book id is malformed.
    """
    if caller is None:
        raise Unauthenticated("this URL needs its signed token (?token=) or a bearer token")
    user_id = request.query_params.get("user_id")
    authorize(caller, "get_book_archive", {"book_id": book_id, "user_id": user_id})
    claims = {
        "book": check_book_id(book_id),
        "scope": check_scope(request.query_params.get("scope", "content")),
        "user": check_user_id(user_id),
        "agent": caller.agent_id,
    }
    return resources.signer.sign(TOKEN_PURPOSE, claims, resources.settings.archive_url_ttl)[0]


def register_routes(mcp: FastMCP, state: ServerState) -> None:
    """Register the archive HTTP routes on `mcp`."""
    auth_on = mcp.auth is not None

    @mcp.custom_route("/archives/{book_id}.zip", methods=["GET"])
    async def download_archive(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        started = time.perf_counter()
        book_id = str(request.path_params.get("book_id", ""))
        caller: Caller | None = None
        try:
            resources = state.require()
            token = request.query_params.get("token")
            if token is None and auth_on:
                caller = caller_from_request(request)
                token = bearer_token(resources, caller, book_id, request)
            download = await ArchiveService(resources).download(
                book_id, token, request.query_params.get("after")
            )
        except PanaversityFSError as error:
            logger.info("archive refused", extra={"book_id": book_id[:64], "error": error.code})
            if state.resources is not None:
                metrics = state.resources.metrics
                metrics.archive_total.labels(metrics.book(book_id), "none", "refused").inc()
                if caller is not None:
                    state.resources.content.note_read(
                        caller,
                        "download_archive",
                        book_id,
                        f"archive:{request.query_params.get('scope', 'content')}",
                        request.query_params.get("user_id"),
                        started,
                        error,
                    )
            return error_response(error)
        try:
            release = resources.archive_slots.take(download.agent_id or ANONYMOUS_URL)
        except PanaversityFSError as error:
            logger.info("archive refused", extra={"book_id": book_id[:64], "error": error.code})
            return error_response(error)
        report = download.report
        if download.agent_id:
            resources.content.note_read(
                Caller(download.agent_id),
                "download_archive",
                report.book_id,
                f"archive:{report.scope}",
                report.user_id,
                started,
            )
        return ArchiveResponse(
            download.body(),
            release,
            resources.settings.archive_stall_timeout,
            headers={
                "Content-Disposition": f'attachment; filename="{download.filename}"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )


class ArchiveResponse(StreamingResponse):
    """A ZIP stream that holds its download slot until the response ends, however it ends,
    and is cut off when its client takes no block for `stall_timeout` seconds."""

    media_type = "application/zip"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        release: Callable[[], None],
        stall_timeout: float,
        headers: dict[str, str],
    ) -> None:
        super().__init__(body, headers=headers)
        self._release = release
        self._stall_timeout = stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the body; give the slot back at the end."""

        async def bounded(message: Message) -> None:
            await asyncio.wait_for(send(message), self._stall_timeout)

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:
            logger.warning("archive client stopped reading; the download was cut off")
        finally:
            self._release()
