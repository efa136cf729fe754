"""What the asset modules share: names, limits, path checks, and a base with the journal lookups."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from panaversity_fs.app.resources import Resources
from panaversity_fs.assets.results import AssetUpload
from panaversity_fs.content.service import Target
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, database_unavailable
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import InvalidArgument, SchemaViolation
from panaversity_fs.files.idempotency import Idempotency, replayed
from panaversity_fs.files.mime import OCTET_STREAM
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.paths import ASSET_TYPES, BASE_USER
from panaversity_fs.signing import public_base_url
from panaversity_fs.storage.blobs import StorageError

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


def iso_time(unix: int) -> str:
    """ISO-8601 UTC text of a unix time."""
    return datetime.fromtimestamp(unix, UTC).isoformat()


class AssetBase:
    """Resources and lookups every asset operation needs."""

    def __init__(self, resources: Resources) -> None:
        self._r = resources
        self._settings = resources.settings
        self._store = resources.store
        self._content = resources.content

    async def _row(self, target: Target) -> JournalRow | None:
        try:
            async with self._r.db.read() as conn:
                rows = await journal.fetch(conn, target.book_id, target.path, [BASE_USER])
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
        row = rows.get(BASE_USER)
        return row if row is not None and row.exists else None

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self._store.delete(key)
        except StorageError:
            logger.warning("could not remove %s; recovery will", key, exc_info=True)

    def _download_url(self, book_id: str, path: str, digest: str) -> tuple[str, int]:
        claims = {"b": book_id, "p": path, "h": digest}
        token, expires = self._r.signer.sign(DOWNLOAD_PURPOSE, claims, self._settings.asset_url_ttl)
        return f"{public_base_url(self._settings)}/assets/{token}", expires

    async def _replayed(self, idem: Idempotency | None) -> AssetUpload | None:
        """The stored result of an earlier call under `idem`'s key (a fresh download URL).

        Raises:
            InvalidArgument: the key was used for another request.
            Unavailable: the database failed.
        """
        replay = await replayed(self._r.db, idem)
        if replay is None:
            return None
        assert idem is not None
        self._r.metrics.replays.labels(idem.tool).inc()
        outcome, content_type = replay.write()
        return self._stored(outcome, content_type or OCTET_STREAM)

    def _stored(self, outcome: WriteOutcome, content_type: str) -> AssetUpload:
        url, expires = self._download_url(outcome.book_id, outcome.path, outcome.file_hash)
        return AssetUpload(
            status="stored",
            book_id=outcome.book_id,
            path=outcome.path,
            size=outcome.size,
            file_hash=outcome.file_hash,
            content_type=content_type,
            mode=outcome.mode,
            version=outcome.version,
            previous_hash=outcome.previous_hash,
            download_url=url,
            expires_at=iso_time(expires),
        )
