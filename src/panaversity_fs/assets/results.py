"""What the asset tools return (their structured outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field


class AssetUpload(BaseModel):
    """`upload_asset` / `complete_asset_upload`: a stored asset, or the URL to upload it to.

    `status: "stored"` carries the committed file (`mode`, `file_hash`, ...); `status:
    "upload_required"` carries `upload_url`, `method`, `headers` and `upload_id`.
    """

    status: Literal["stored", "upload_required"]
    book_id: str
    path: str
    size: int = Field(description="Bytes stored (stored) or declared (upload_required).")
    file_hash: str | None = Field(default=None, description="Lowercase hex sha256 of the stored bytes.")
    content_type: str | None = Field(default=None, description="MIME type sniffed from the bytes.")
    mode: Literal["created", "updated"] | None = None
    version: int | None = None
    previous_hash: str | None = None
    download_url: str | None = Field(default=None, description="Short-lived signed URL serving the bytes.")
    upload_url: str | None = Field(default=None, description="Send the exact declared bytes here.")
    method: Literal["PUT"] | None = None
    headers: dict[str, str] | None = Field(default=None, description="Headers to send with the upload.")
    upload_id: str | None = Field(default=None, description="Pass to complete_asset_upload after the PUT.")
    sha256: str | None = Field(default=None, description="The declared sha256 the upload must match.")
    expires_at: str | None = Field(
        default=None, description="ISO-8601 time the upload_url (or download_url) stops working."
    )


class AssetInfo(BaseModel):
    """`get_asset`: an asset's metadata and a download URL (the bytes travel apart)."""

    book_id: str
    path: str
    file_hash: str
    size: int
    content_type: str
    last_modified: str = Field(description="ISO-8601 time of the last committed change.")
    version: int
    uploaded_by: str | None = Field(description="Agent id of the write that stored these bytes.")
    download_url: str
    expires_at: str = Field(description="ISO-8601 time the download_url stops working.")
    binary_note: str | None = Field(default=None, description="Why the bytes asked for are not inline.")


@dataclass(frozen=True, slots=True)
class AssetRead:
    """An asset's description and, when asked for and small enough, its bytes."""

    info: AssetInfo
    data: bytes | None


class AssetEntry(BaseModel):
    """One asset in a listing."""

    path: str
    file_hash: str
    size: int
    content_type: str
    last_modified: str


class AssetListing(BaseModel):
    """`list_assets`: one page of a book's assets in path order."""

    book_id: str
    asset_type: str | None = None
    items: list[AssetEntry]
    next_cursor: str | None = None
