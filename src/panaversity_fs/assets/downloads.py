"""Asset downloads: resolve a signed download token, stream the bytes hash-checked."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from panaversity_fs.assets.common import CHUNK_BYTES, DOWNLOAD_PURPOSE, live_asset
from panaversity_fs.db.engine import Database
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import Conflict, Forbidden, NotFound, Unavailable
from panaversity_fs.files.mime import OCTET_STREAM
from panaversity_fs.files.target import Target
from panaversity_fs.metrics import Metrics
from panaversity_fs.signing import UrlSigner
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Download:
    """A verified download: where the bytes are and how to describe them."""

    key: str
    path: str
    size: int
    sha256: str
    content_type: str
    expires: int


class DownloadBroken(Exception):
    """The stored bytes stopped matching the journal mid-stream; the response must be cut."""


class Downloads:
    """The `GET /assets/...` side of assets: resolve what a URL names, stream it verified."""

    def __init__(self, db: Database, store: BlobStore, signer: UrlSigner, metrics: Metrics) -> None:
        self._db = db
        self._store = store
        self._signer = signer
        self._metrics = metrics

    async def current(self, target: Target, expires: int) -> Download:
        """The current version of an asset (for a caller whose token allows reading it).

        Raises:
            NotFound: no such asset.
            Unavailable: the database or storage failed.
        """
        row = await live_asset(self._db, target)
        if row is None or row.sha256 is None:
            raise NotFound("no such asset: list_assets shows the assets", path=target.path)
        return await self.locate(row, expires)

    async def open(self, token: str) -> Download:
        """Resolve a download token to the stored object holding exactly its bytes.

        Raises:
            Forbidden: the token is invalid or expired.
            NotFound: the asset was deleted.
            Conflict: the asset changed since the URL was issued.
            Unavailable: the database or storage failed, or a publish is moving the bytes.
        """
        claims = self._signer.verify(DOWNLOAD_PURPOSE, token)
        book, path, digest = claims.get("b"), claims.get("p"), claims.get("h")
        if not (isinstance(book, str) and isinstance(path, str) and isinstance(digest, str)):
            raise Forbidden("the signed URL is invalid")
        row = await live_asset(self._db, Target.asset(book, path))
        if row is None or row.sha256 is None:
            raise NotFound("the asset was deleted")
        if row.sha256 != digest:
            raise Conflict("the asset changed since this URL was issued: call get_asset for a new one")
        return await self.locate(row, int(claims["exp"]))

    async def locate(self, row: JournalRow, expires: int) -> Download:
        """The stored object holding exactly the bytes of the live asset row `row`.

        Raises:
            Unavailable: storage failed, or a publish is moving the bytes.
        """
        assert row.sha256 is not None
        for key in row.object_keys:
            try:
                size = await self._store.size(key)
            except BlobNotFound:
                continue
            except StorageError as exc:
                logger.warning("storage failure", exc_info=exc)
                raise Unavailable("the storage is unavailable; retry") from None
            if size == row.size:
                return Download(key, row.path, size, row.sha256, row.content_type or OCTET_STREAM, expires)
        raise Unavailable("the asset is being moved; retry")

    async def stream(self, download: Download, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yield `length` bytes of the object from `offset`, in chunks.

        A whole-object stream is hashed as it goes and its last chunk is held back until the
        hash matches, so a client never receives a complete body that is not the asset.

        Raises:
            DownloadBroken: the bytes ran short or did not match (cut the response).
        """
        whole = offset == 0 and length == download.size
        digest = hashlib.sha256()
        remaining = length
        held: bytes | None = None
        reader = await self._store.open_reader(download.key, offset)
        try:
            while remaining > 0:
                chunk = await reader.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                if whole:
                    digest.update(chunk)
                if held is not None:
                    yield held
                held = chunk
        except StorageError as exc:
            raise DownloadBroken("storage failed mid-download") from exc
        finally:
            try:
                await reader.close()
            except StorageError:
                logger.warning("could not close a download reader", exc_info=True)
        if remaining or (whole and digest.hexdigest() != download.sha256):
            self._metrics.journal_storage_mismatch_total.inc()
            logger.error("stored asset does not match the journal", extra={"path": download.path})
            raise DownloadBroken("stored bytes do not match the journal")
        if held is not None:
            yield held
