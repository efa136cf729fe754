"""HTTP routes for assets: `PUT /uploads/{token}` (fs-backend uploads), `GET /assets/{token}`,
and `GET /assets/{book_id}/{path}` (the current version of an asset, for a bearer token).

The first two are authorised by the signed token in the URL alone; the third, registered only
with auth on, by `Authorization: Bearer <JWT>` allowing `get_asset` on the book. Errors are
JSON objects in the tools' wire form, with the matching HTTP status.
"""

from __future__ import annotations

import re
import time

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from panaversity_fs.app.resources import ServerState
from panaversity_fs.assets.downloads import Download, Downloads
from panaversity_fs.assets.uploads import Uploads
from panaversity_fs.auth.access import authorize
from panaversity_fs.auth.identity import Caller, caller_from_request
from panaversity_fs.content.service import Target
from panaversity_fs.errors import InvalidArgument, NotFound, PanaversityFSError, Unauthenticated

_STATUS = {
    "INVALID_PATH": 400,
    "SCHEMA_VIOLATION": 400,
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "HASH_REQUIRED": 409,
    "FORBIDDEN": 403,
    "UNAUTHENTICATED": 401,
    "TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"})
"""Raster images, the only types a browser may render inline; everything else (SVG, HTML-ish
text, PDF, ...) is served as an attachment."""

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_HUGE = 10**18
"""Stands for any byte position with more digits than this has: beyond every asset's size."""


def error_response(error: PanaversityFSError) -> JSONResponse:
    """The JSON wire form of `error` with its HTTP status."""
    headers = (
        {"WWW-Authenticate": 'Bearer error="invalid_token"'} if isinstance(error, Unauthenticated) else None
    )
    return JSONResponse(error.to_dict(), status_code=_STATUS.get(error.code, 500), headers=headers)


class BearerDownloads(Downloads):
    """Downloads of an asset's current version, for a caller with a verified bearer token."""

    async def open_current(self, caller: Caller | None, book_id: str, path: str) -> Download:
        """Check the caller may read the book, then open the asset's current version.

        Raises:
            Unauthenticated: no verified bearer token.
            Forbidden: the token lacks `fs:read` or does not allow this book.
            InvalidPath, SchemaViolation, InvalidArgument: book id or path is malformed.
            NotFound: no such asset.
            Unavailable: the database or storage failed.
        """
        if caller is None:
            raise Unauthenticated("this URL needs a bearer token (Authorization: Bearer <JWT>)")
        authorize(caller, "get_asset", {"book_id": book_id, "path": path})
        target = Target.asset(book_id, path)
        row = await self._row(target)
        if row is None or row.sha256 is None:
            raise NotFound("no such asset", path=target.path)
        return await self.locate(row, int(time.time() + self._settings.asset_url_ttl))


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """The (offset, length) of a single `Range: bytes=a-b`; None to serve the whole object;
    False when the range cannot be satisfied."""
    if header is None or "," in header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = (_position(group) for group in match.groups())
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end - start + 1


def _position(digits: str) -> str:
    """A range position as given, or `_HUGE` when it has more digits than any size can (int()
    of thousands of digits raises, and such a position is past every asset anyway)."""
    return str(_HUGE) if len(digits) > len(str(_HUGE)) else digits


def register_routes(mcp: FastMCP, state: ServerState) -> None:
    """Register the asset upload and download routes on `mcp`."""

    @mcp.custom_route("/uploads/{token}", methods=["PUT"])
    async def receive_upload(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        try:
            uploads = Uploads(state.require())
            length = request.headers.get("content-length")
            declared = int(length) if length is not None and length.isdigit() else None
            ticket = await uploads.receive(request.path_params["token"], declared, request.stream())
        except PanaversityFSError as error:
            return error_response(error)
        return JSONResponse(
            {
                "status": "uploaded",
                "path": ticket.path,
                "size": ticket.size,
                "sha256": ticket.sha256,
                "next": "call complete_asset_upload with the upload_id",
            }
        )

    @mcp.custom_route("/assets/{token}", methods=["GET"])
    async def download_asset(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        try:
            downloads = Downloads(state.require())
            download = await downloads.open(request.path_params["token"])
        except PanaversityFSError as error:
            return error_response(error)
        return serve(request, downloads, download)

    if mcp.auth is not None:

        @mcp.custom_route("/assets/{book_id}/{path:path}", methods=["GET"])
        async def download_current_asset(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
            started = time.perf_counter()
            book_id, path = str(request.path_params["book_id"]), str(request.path_params["path"])
            caller: Caller | None = None
            try:
                resources = state.require()
                downloads = BearerDownloads(resources)
                caller = caller_from_request(request)
                download = await downloads.open_current(caller, book_id, path)
            except PanaversityFSError as error:
                if caller is not None and state.resources is not None:
                    state.resources.content.note_read(
                        caller, "download_asset", book_id, path, None, started, error
                    )
                return error_response(error)
            assert caller is not None
            resources.content.note_read(caller, "download_asset", book_id, download.path, None, started)
            return serve(request, downloads, download)


def serve(request: Request, downloads: Downloads, download: Download) -> Response:
    """The response for a verified download: headers, an optional single range, the bytes."""
    filename = download.path.rsplit("/", 1)[-1]
    disposition = "inline" if download.content_type in INLINE_TYPES else "attachment"
    headers = {
        "Content-Type": download.content_type,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": f'{disposition}; filename="{filename}"',
        "Cache-Control": f"private, max-age={max(0, download.expires - int(time.time()))}",
        "ETag": f'"{download.sha256}"',
        "Accept-Ranges": "bytes",
    }
    wanted = parse_range(request.headers.get("range"), download.size)
    if wanted is False:
        unsatisfiable = InvalidArgument("the requested range is outside the asset", size=download.size)
        return JSONResponse(
            unsatisfiable.to_dict(),
            status_code=416,
            headers={"Content-Range": f"bytes */{download.size}"},
        )
    status = 200
    offset, length = 0, download.size
    if isinstance(wanted, tuple):
        offset, length = wanted
        status = 206
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{download.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(downloads.stream(download, offset, length), status_code=status, headers=headers)
