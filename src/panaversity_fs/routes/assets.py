"""HTTP routes of assets: `PUT /uploads/{token}` (fs-backend uploads), `GET /assets/{token}`,
and `GET /assets/{book_id}/{path}` (the current version of an asset, for a bearer token).

The first two are authorised by the signed token in the URL alone; the third, registered only
with auth on, by `Authorization: Bearer <JWT>` allowing `get_asset` on the book. Errors are
JSON objects in the tools' wire form, with the status their class names.
"""

from __future__ import annotations

import re
import time

from fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from panaversity_fs.app.http import route, route_operation
from panaversity_fs.app.middleware.identity import caller_from_request
from panaversity_fs.app.resources import Resources, ServerState
from panaversity_fs.assets.downloads import Download, Downloads
from panaversity_fs.auth.access import authorize
from panaversity_fs.errors import InvalidArgument, Unauthenticated
from panaversity_fs.files.target import Target

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"})
"""Raster images, the only types a browser may render inline; everything else (SVG, HTML-ish
text, PDF, ...) is served as an attachment."""

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_HUGE = 10**18
"""Stands for any byte position with more digits than this has: beyond every asset's size."""


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


async def _receive_upload(request: Request, resources: Resources) -> Response:
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    ticket = await resources.uploads.receive(request.path_params["token"], declared, request.stream())
    return JSONResponse(
        {
            "status": "uploaded",
            "path": ticket.path,
            "size": ticket.size,
            "sha256": ticket.sha256,
            "next": "call complete_asset_upload with the upload_id",
        }
    )


async def _download(request: Request, resources: Resources) -> Response:
    download = await resources.downloads.open(request.path_params["token"])
    return serve(request, resources.downloads, download)


async def _download_current(request: Request, resources: Resources) -> Response:
    """The current version of an asset, for a bearer token allowing `get_asset` on its book."""
    book_id, path = str(request.path_params["book_id"]), str(request.path_params["path"])
    caller = caller_from_request(request)
    if caller is None:
        raise Unauthenticated("this URL needs a bearer token (Authorization: Bearer <JWT>)")
    op = route_operation(caller, "download_asset")
    with resources.trail.read(op, book_id, path) as note:
        authorize(caller, "get_asset", {"book_id": book_id, "path": path})
        target = Target.asset(book_id, path)
        note.what = target.path
        expires = int(time.time() + resources.settings.asset_url_ttl)
        download = await resources.downloads.current(target, expires)
    return serve(request, resources.downloads, download)


def register_routes(mcp: FastMCP, state: ServerState) -> None:
    """Register the asset upload and download routes on `mcp`."""
    mcp.custom_route("/uploads/{token}", methods=["PUT"])(route(state, "upload_bytes", _receive_upload))
    mcp.custom_route("/assets/{token}", methods=["GET"])(route(state, "download_asset", _download))
    if mcp.auth is not None:
        mcp.custom_route("/assets/{book_id}/{path:path}", methods=["GET"])(
            route(state, "download_current_asset", _download_current)
        )


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
            unsatisfiable.to_dict(), status_code=416, headers={"Content-Range": f"bytes */{download.size}"}
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
