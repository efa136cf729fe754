"""What the asset modules share: names, path checks, the base-row lookup and download links."""

from __future__ import annotations

import logging

from panaversity_fs.assets.results import AssetUpload
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument, SchemaViolation
from panaversity_fs.files.mime import OCTET_STREAM
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.paths import ASSET_TYPES, BASE_USER
from panaversity_fs.signing import UrlSigner, public_base_url
from panaversity_fs.storage.blobs import BlobStore, StorageError
from panaversity_fs.times import from_unix

logger = logging.getLogger(__name__)

UPLOAD_PURPOSE = "upload"
DOWNLOAD_PURPOSE = "asset-download"

CHUNK_BYTES = 1024 * 1024
"""Bytes per storage read or write when streaming an object."""


def check_asset_type(value: object) -> str:
    """Return `value` if it names an asset folder.

    Raises:
        SchemaViolation: it is not one of `paths.ASSET_TYPES`.
    """
    if isinstance(value, str) and value in ASSET_TYPES:
        return value
    raise SchemaViolation(
        f"asset_type must be one of {', '.join(ASSET_TYPES)}",
        field="asset_type",
        allowed=list(ASSET_TYPES),
    )


def asset_target(book_id: object, asset_type: object, filename: object) -> Target:
    """The validated address of `static/{asset_type}/{filename}` (sub-folders allowed).

    Raises:
        InvalidPath: the name is unsafe (traversal, encoding tricks, ...); nothing is sanitised.
        SchemaViolation: the asset type or a name segment does not fit the schema.
        InvalidArgument: the book id or filename is malformed.
    """
    kind = check_asset_type(asset_type)
    if not isinstance(filename, str) or not filename:
        raise InvalidArgument("filename must be a non-empty string", field="filename")
    return Target.asset(book_id, f"static/{kind}/{filename}")


async def live_asset(db: Database, target: Target) -> JournalRow | None:
    """The live journal row of a shared asset, or None.

    Raises:
        Unavailable: the database failed.
    """
    try:
        rows = await journal.look_up(db, target.book_id, target.path, [BASE_USER])
    except DB_ERRORS as exc:
        raise database_failure(exc) from None
    row = rows.get(BASE_USER)
    return row if row is not None and row.exists else None


async def delete_quietly(store: BlobStore, key: str) -> None:
    """Remove an object nobody needs any more; a failure is logged (recovery removes it later)."""
    try:
        await store.delete(key)
    except StorageError:
        logger.warning("could not remove %s; recovery will", key, exc_info=True)


class AssetLinks:
    """Signed download URLs of assets, and the results that carry them."""

    def __init__(self, settings: Settings, signer: UrlSigner) -> None:
        self._settings = settings
        self._signer = signer

    def download_url(self, book_id: str, path: str, digest: str) -> tuple[str, int]:
        """A short-lived signed URL serving exactly the bytes hashing to `digest`, and its expiry."""
        claims = {"b": book_id, "p": path, "h": digest}
        token, expires = self._signer.sign(DOWNLOAD_PURPOSE, claims, self._settings.asset_url_ttl)
        return f"{public_base_url(self._settings)}/assets/{token}", expires

    def stored(self, outcome: WriteOutcome, content_type: str | None) -> AssetUpload:
        """The result of a committed asset write, with a fresh download URL."""
        url, expires = self.download_url(outcome.book_id, outcome.path, outcome.file_hash)
        return AssetUpload(
            status="stored",
            book_id=outcome.book_id,
            path=outcome.path,
            size=outcome.size,
            file_hash=outcome.file_hash,
            content_type=content_type or OCTET_STREAM,
            mode=outcome.mode,
            version=outcome.version,
            previous_hash=outcome.previous_hash,
            download_url=url,
            expires_at=from_unix(expires),
        )
