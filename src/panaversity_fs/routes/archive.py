"""HTTP route: `GET /archives/{book_id}.zip?token=...&after=...` streams a book archive.

Instead of the signed `token`, a request may carry `Authorization: Bearer <JWT>` (auth on) and
name the archive with `scope=content|assets|all` (default `content`) and `user_id=`; the token
must allow `get_book_archive` for that book and user (same rules as the tool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from panaversity_fs.app.http import route, route_operation
from panaversity_fs.app.middleware.identity import caller_from_request
from panaversity_fs.app.resources import Resources, ServerState
from panaversity_fs.archive.service import ArchiveRequest, check_scope
from panaversity_fs.audit.trail import Subject
from panaversity_fs.auth.access import authorize
from panaversity_fs.auth.tokens import auth_enabled
from panaversity_fs.errors import PanaversityFSError, Unauthenticated
from panaversity_fs.identity import Caller
from panaversity_fs.paths import check_book_id, check_user_id

logger = logging.getLogger(__name__)

OPERATION = "download_archive"


def bearer_request(caller: Caller | None, book_id: str, request: Request) -> ArchiveRequest:
    """The archive a bearer-authorised request names (`scope`, `user_id` query parameters).

    Raises:
        Unauthenticated: no verified bearer token.
        Forbidden: the token does not allow this book or user (or lacks `fs:read`).
        InvalidArgument: `scope`, `user_id` or the book id is malformed.
    """
    if caller is None:
        raise Unauthenticated("this URL needs its signed token (?token=) or a bearer token")
    user_id = request.query_params.get("user_id")
    authorize(caller, "get_book_archive", {"book_id": book_id, "user_id": user_id})
    scope = check_scope(request.query_params.get("scope", "content"))
    return ArchiveRequest(check_book_id(book_id), scope, check_user_id(user_id), caller.agent_id)


async def _download(request: Request, resources: Resources) -> Response:
    book_id = str(request.path_params.get("book_id", ""))
    token = request.query_params.get("token")
    caller: Caller | None = None
    try:
        if token is None and auth_enabled(resources.settings):
            caller = caller_from_request(request)
            wanted = bearer_request(caller, book_id, request)
        else:
            wanted = resources.archives.verify_url(book_id, token)
        download = await resources.archives.open(wanted, request.query_params.get("after"))
    except PanaversityFSError as error:
        logger.info("archive refused", extra={"book_id": book_id[:64], "error": error.code})
        metrics = resources.metrics
        metrics.archive_total.labels(metrics.book(book_id), "none", "refused").inc()
        if caller is not None:
            scope = f"archive:{request.query_params.get('scope', 'content')}"
            subject = Subject(book_id, scope, request.query_params.get("user_id"))
            resources.trail.note(route_operation(caller, OPERATION), subject, error)
        raise
    if wanted.agent_id:
        subject = Subject(wanted.book_id, f"archive:{wanted.scope}", wanted.user_id)
        resources.trail.note(route_operation(Caller(wanted.agent_id), OPERATION), subject)
    return ArchiveResponse(
        download.body(),
        download.release,
        resources.settings.archive_stall_timeout,
        headers={
            "Content-Disposition": f'attachment; filename="{download.filename}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def register_routes(mcp: FastMCP, state: ServerState) -> None:
    """Register the archive HTTP route on `mcp`."""
    mcp.custom_route("/archives/{book_id}.zip", methods=["GET"])(route(state, OPERATION, _download))


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
            try:
                await self._close_body()
            finally:
                self._release()

    async def _close_body(self) -> None:
        """End the body now, whatever stopped the response: Starlette leaves a body whose client
        went away suspended, and its `finally` (the download's log line and metrics) would only
        run once the garbage collector found it."""
        close = getattr(self.body_iterator, "aclose", None)
        if close is not None:
            await close()
