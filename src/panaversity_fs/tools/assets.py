"""Asset tools: `upload_asset`, `complete_asset_upload`, `get_asset`, `list_assets`, `delete_asset`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.assets.results import AssetInfo, AssetListing, AssetUpload
from panaversity_fs.assets.service import MAX_PAGE
from panaversity_fs.files.results import DeleteOutcome
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import DELETES, READ_ONLY, WRITES
from panaversity_fs.tools.params import (
    SHA256,
    AssetPath,
    AssetType,
    BookId,
    Count,
    Cursor,
    Flag,
    Hash,
    IdempotencyKey,
    Limit,
    OptionalAssetType,
    page_size,
    text,
)


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the asset tools on `mcp`."""

    async def upload_asset(
        book_id: BookId,
        asset_type: AssetType,
        filename: Annotated[str, Field(description="e.g. ch1/diagram.png")],
        binary_data: Annotated[str | None, Field(description="Base64.")] = None,
        expected_hash: Hash = None,
        size: Annotated[Limit, Field(description="Large files: size and sha256 get an upload_url.")] = None,
        sha256: Annotated[str | None, text(SHA256)] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Store a file under static/{asset_type}/; write contract as for lessons."""
        upload = await state.require().uploads.upload(
            current_operation(), book_id, asset_type, filename, binary_data, expected_hash, size, sha256
        )
        return _upload_result(upload)

    async def complete_asset_upload(
        upload_id: Annotated[str, Field(description="From upload_asset.")],
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Commit a large upload after its PUT."""
        upload = await state.require().uploads.complete(current_operation(), upload_id)
        return _upload_result(upload)

    async def get_asset(
        book_id: BookId,
        path: AssetPath,
        include_binary: Annotated[Flag, Field(description="Inline small assets.")] = False,
    ) -> ToolResult:
        """An asset's hash, type and download link."""
        read = await state.require().assets.get(current_operation(), book_id, path, include_binary)
        info = read.info
        link = results.link(info.download_url, info.path.rsplit("/", 1)[-1], info.content_type)
        if read.data is None:
            return results.plain(info, link)
        return results.plain(
            info, results.binary(read.data, info.content_type, info.book_id, info.path), link
        )

    async def list_assets(
        book_id: BookId,
        asset_type: OptionalAssetType = None,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(MAX_PAGE)] = 100,
    ) -> ToolResult:
        """List a book's assets."""
        listing = await state.require().assets.list(current_operation(), book_id, asset_type, cursor, limit)
        return results.plain(listing)

    async def delete_asset(
        book_id: BookId,
        path: AssetPath,
        expected_hash: Hash = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Delete an asset."""
        deleted = await state.require().assets.delete(current_operation(), book_id, path, expected_hash)
        return results.plain(deleted)

    mcp.tool(
        upload_asset,
        title="Upload an asset",
        output_schema=results.output_schema(AssetUpload),
        annotations=WRITES,
    )
    mcp.tool(
        complete_asset_upload,
        title="Finish a large upload",
        output_schema=results.output_schema(AssetUpload),
        annotations=WRITES,
    )
    mcp.tool(
        get_asset, title="Get an asset", output_schema=results.output_schema(AssetInfo), annotations=READ_ONLY
    )
    mcp.tool(
        list_assets,
        title="List assets",
        output_schema=results.output_schema(AssetListing),
        annotations=READ_ONLY,
    )
    mcp.tool(
        delete_asset,
        title="Delete an asset",
        output_schema=results.output_schema(DeleteOutcome),
        annotations=DELETES,
    )


def _upload_result(upload: AssetUpload) -> ToolResult:
    if upload.download_url is None:
        return results.plain(upload)
    return results.plain(
        upload, results.link(upload.download_url, upload.path.rsplit("/", 1)[-1], upload.content_type)
    )
