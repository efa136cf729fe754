"""Asset tools: `upload_asset`, `complete_asset_upload`, `get_asset`, `list_assets`, `delete_asset`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field, Strict

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.assets.results import AssetInfo, AssetListing, AssetUpload
from panaversity_fs.files.results import DeleteOutcome
from panaversity_fs.tools.hints import DELETES, READ_ONLY, WRITES
from panaversity_fs.tools.params import AssetPath, BookId, Hash, IdempotencyKey

AssetType = Annotated[str, Field(description="Asset folder: `img`, `images`, `slides`, `videos` or `audio`.")]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the asset tools on `mcp`."""

    async def upload_asset(
        book_id: BookId,
        asset_type: AssetType,
        filename: Annotated[
            str,
            Field(
                description="Name under the asset folder; sub-folders allowed (`diagrams/ch1.png`). "
                "Letters, digits, `-`, `_`, `.`; unsafe names are refused, never rewritten."
            ),
        ],
        binary_data: Annotated[
            str | None,
            Field(description="The bytes, standard base64 (small files; the limit is in the error)."),
        ] = None,
        expected_hash: Hash = None,
        size: Annotated[
            int | None, Strict(), Field(description="Large files: the exact byte count you will upload.")
        ] = None,
        sha256: Annotated[
            str | None, Field(description="Large files: lowercase hex sha256 of the bytes you will upload.")
        ] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> AssetUpload:
        """Store an image, slide deck, video or audio file under `static/{asset_type}/`.

        Small files: pass `binary_data` (`status: "stored"`). Large files: pass `size` and
        `sha256` instead; you get `status: "upload_required"` with an `upload_url`: PUT the
        exact bytes there with the given `headers`, then call `complete_asset_upload` with the
        `upload_id`. Same contract as `write_content`: omit `expected_hash` to create, pass
        the current `file_hash` to replace (`HASH_REQUIRED` / `CONFLICT` / `NOT_FOUND`
        otherwise). The MIME type is sniffed from the bytes, not taken from the name.
        """
        return await state.require().uploads.upload(
            current_operation(), book_id, asset_type, filename, binary_data, expected_hash, size, sha256
        )

    async def complete_asset_upload(
        upload_id: Annotated[str, Field(description="The `upload_id` upload_asset returned.")],
        idempotency_key: IdempotencyKey = None,
    ) -> AssetUpload:
        """Commit a large upload after its bytes were PUT to the `upload_url`.

        The uploaded bytes must have exactly the declared size and sha256 (else
        `INVALID_ARGUMENT` and the upload is discarded). Only the agent that declared the
        upload may complete it (`FORBIDDEN` otherwise). A completed upload is consumed: a
        second call gets `NOT_FOUND` (use `get_asset` to confirm the first one landed), unless it
        repeats the `idempotency_key` of the first: then it returns the first result.
        `UNAVAILABLE` keeps the upload; call again.
        """
        return await state.require().uploads.complete(current_operation(), upload_id)

    async def get_asset(
        book_id: BookId,
        path: AssetPath,
        include_binary: Annotated[
            bool, Strict(), Field(description="Also return the bytes (base64) if the asset is small enough.")
        ] = False,
    ) -> AssetInfo:
        """Metadata of an asset: hash, size, sniffed MIME type, who uploaded it, and a
        short-lived `download_url`. With `include_binary`, small assets also come inline in
        `binary_data`; larger ones leave it null and say why in `binary_note`.
        """
        return await state.require().assets.get(current_operation(), book_id, path, include_binary)

    async def list_assets(
        book_id: BookId,
        asset_type: Annotated[str | None, Field(description="Only this asset folder.")] = None,
        cursor: Annotated[str | None, Field(description="`next_cursor` of the previous page.")] = None,
        limit: Annotated[
            int | None, Strict(), Field(description="Assets per page, 1-1000 (default 100).")
        ] = None,
    ) -> AssetListing:
        """List a book's assets in path order, one bounded page at a time."""
        return await state.require().assets.list(current_operation(), book_id, asset_type, cursor, limit)

    async def delete_asset(
        book_id: BookId,
        path: AssetPath,
        expected_hash: Hash = None,
        idempotency_key: IdempotencyKey = None,
    ) -> DeleteOutcome:
        """Delete an asset (idempotent: a missing asset gives `existed: false`).

        Pass `expected_hash` to delete only the version you know (`CONFLICT` otherwise).
        """
        return await state.require().assets.delete(current_operation(), book_id, path, expected_hash)

    mcp.tool(
        upload_asset,
        annotations=WRITES,
    )
    mcp.tool(
        complete_asset_upload,
        annotations=WRITES,
    )
    mcp.tool(get_asset, annotations=READ_ONLY)
    mcp.tool(list_assets, annotations=READ_ONLY)
    mcp.tool(
        delete_asset,
        annotations=DELETES,
    )
