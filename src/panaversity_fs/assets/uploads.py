"""Asset uploads: inline (base64) and by URL, through the journaled-file write protocol.

Every asset write is a write of the files engine (same `expected_hash` contract, journal row
with the sniffed MIME type, audit entry with the caller's agent id). Large files take a detour
first:

1. `upload_asset` with `size` and `sha256` signs an upload ticket naming a private key under
   `.pfs/uploads/` and hands out a URL for it: an S3 presigned PUT, or our own `PUT /uploads/`
   route on the fs backend.
2. The client sends the bytes there.
3. `complete_asset_upload` copies the uploaded object to a fresh staging key (a key nobody
   else can write, so the bytes hashed are the bytes committed), checks its size and sha256
   against the ticket, and commits it with `FileEngine.commit`.

Upload objects never completed are removed by recovery once their URL has expired.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from panaversity_fs.assets.common import CHUNK_BYTES, UPLOAD_PURPOSE, AssetLinks, asset_target, live_asset
from panaversity_fs.assets.common import delete_quietly as _delete_quietly
from panaversity_fs.assets.results import AssetUpload
from panaversity_fs.assets.tickets import UploadTicket, contract_refusal, decode_inline
from panaversity_fs.audit.trail import AuditTrail, Subject
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.errors import (
    Forbidden,
    InvalidArgument,
    NotFound,
    PanaversityFSError,
    TooLarge,
    Unavailable,
)
from panaversity_fs.files.engine import FileEngine, StagedWrite
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.mime import SNIFF_BYTES, sniff_content_type
from panaversity_fs.files.target import Target
from panaversity_fs.metrics import Metrics
from panaversity_fs.operation import Operation
from panaversity_fs.paths import check_hash
from panaversity_fs.signing import UrlSigner, public_base_url
from panaversity_fs.storage.blobs import BlobNotFound, BlobStore, StorageError, new_staging_key, upload_key
from panaversity_fs.times import from_unix

logger = logging.getLogger(__name__)

UPLOAD_OPERATION = "upload_asset"
"""What the audit log calls every step of an upload (its refusals and its commit)."""


class Uploads:
    """`upload_asset`, the fs upload route, and `complete_asset_upload`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        files: FileEngine,
        trail: AuditTrail,
        signer: UrlSigner,
        links: AssetLinks,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._files = files
        self._trail = trail
        self._signer = signer
        self._links = links
        self._metrics = metrics

    async def upload(
        self,
        op: Operation,
        book_id: object,
        asset_type: object,
        filename: object,
        binary_data: object,
        expected_hash: object,
        size: object,
        sha256: object,
    ) -> AssetUpload:
        """Store `binary_data` (base64), or, without it, hand out an upload URL for `size` bytes.

        With the operation's idempotency key, an inline upload repeating one that committed
        returns its result (a declaration changes nothing, so it takes no key).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument, TooLarge: bad arguments (a reused key).
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; nothing was written.
        """
        async with self._trail.mutation(op, Subject(book_id, f"static/{asset_type}/{filename}")):
            target = asset_target(book_id, asset_type, filename)
            expected = check_hash(expected_hash)
            declared_sha = check_hash(sha256, "sha256")
            if binary_data is None:
                declared_size = self._check_size(size)
                if declared_sha is None:
                    raise InvalidArgument(
                        "pass binary_data (base64, small files) or size and sha256 (upload URL)",
                        field="sha256",
                    )
                return await self._declare(op, target, expected, declared_size, declared_sha)
            data = decode_inline(binary_data, self._settings.max_inline_asset_bytes)
            actual = hashlib.sha256(data).hexdigest()
            if (size is not None and size != len(data)) or declared_sha not in (None, actual):
                raise InvalidArgument("size or sha256 does not match binary_data", size=len(data))
            idem = Idempotency.for_call(op, target.arguments(expected, actual))
            replay = await self._replayed(op, idem)
            if replay is not None:
                return replay
        content_type = sniff_content_type(data, target.path)
        outcome = await self._files.write(op, target, data, actual, expected, content_type, idem)
        return self._links.stored(outcome, content_type)

    def _check_size(self, size: object) -> int:
        limit = self._settings.max_asset_bytes
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InvalidArgument("size must be a positive number of bytes", field="size")
        if size > limit:
            raise TooLarge(f"assets are limited to {limit} bytes", limit=limit)
        return size

    async def _replayed(self, op: Operation, idem: Idempotency | None) -> AssetUpload | None:
        """The stored result of an earlier call under `idem`'s key (with a fresh download URL)."""
        replay = await self._files.replayed(idem)
        if replay is None:
            return None
        self._metrics.replays.labels(op.name).inc()
        outcome, content_type = replay.written()
        return self._links.stored(outcome, content_type)

    async def _declare(
        self, op: Operation, target: Target, expected: str | None, size: int, digest: str
    ) -> AssetUpload:
        """Sign an upload URL for `size` bytes hashing to `digest`.

        Raises:
            HashRequired, Conflict, NotFound: the commit would refuse it (checked now, so that
                nobody uploads megabytes in vain).
            Unavailable: the database or storage failed.
        """
        row = await live_asset(self._db, target)
        refusal = contract_refusal(expected, row.sha256 if row is not None else None)
        if refusal is not None:
            raise refusal
        ttl = self._settings.asset_url_ttl
        key = upload_key(int(time.time() + ttl) + 1)
        ticket = UploadTicket(target.book_id, target.path, key, size, digest, expected, op.agent_id)
        token, expires = self._signer.sign(UPLOAD_PURPOSE, ticket.claims(), ttl)
        if self._store.backend == "fs":
            url, headers = f"{public_base_url(self._settings)}/uploads/{token}", {}
        else:
            try:
                presigned = await self._store.presign_write(key, max(1, int(ttl)))
            except StorageError as exc:
                logger.warning("could not presign an upload", exc_info=exc)
                raise Unavailable("the storage is unavailable; nothing was changed, retry later") from None
            url, headers = presigned.url, presigned.headers
        self._trail.note(op.named("declare_upload"), Subject(target.book_id, target.path))
        return AssetUpload(
            status="upload_required",
            book_id=target.book_id,
            path=target.path,
            size=size,
            sha256=digest,
            upload_url=url,
            method="PUT",
            headers=headers,
            upload_id=token,
            expires_at=from_unix(expires),
        )

    async def receive(
        self, token: str, content_length: int | None, body: AsyncIterator[bytes]
    ) -> UploadTicket:
        """Stream an upload route's request body to the ticket's upload key (fs backend).

        Nothing is kept unless exactly the declared bytes arrived.

        Raises:
            Forbidden: the token is invalid or expired.
            TooLarge: the body is longer than declared (refused before writing when the
                request says so up front).
            InvalidArgument: the body is shorter than declared or its sha256 differs.
            Unavailable: storage failed.
        """
        ticket = UploadTicket.from_claims(self._signer.verify(UPLOAD_PURPOSE, token))
        too_large = TooLarge(f"this upload was declared as {ticket.size} bytes", limit=ticket.size)
        if content_length is not None and content_length > ticket.size:
            raise too_large
        digest = hashlib.sha256()
        received = 0
        kept = False
        try:
            writer = await self._store.open_writer(ticket.key)
            try:
                buffer = bytearray()
                async for chunk in body:
                    received += len(chunk)
                    if received > ticket.size:
                        raise too_large
                    digest.update(chunk)
                    buffer += chunk
                    if len(buffer) >= CHUNK_BYTES:
                        await writer.write(bytes(buffer))
                        buffer.clear()
                if buffer:
                    await writer.write(bytes(buffer))
            finally:
                await writer.close()
            if received != ticket.size or digest.hexdigest() != ticket.sha256:
                raise InvalidArgument(
                    "the body does not match the declared size and sha256",
                    declared_size=ticket.size,
                    received_size=received,
                )
            kept = True
        except StorageError as exc:
            logger.warning("upload could not be stored", exc_info=exc)
            raise Unavailable("the storage is unavailable; retry the upload") from None
        finally:
            if not kept:
                await _delete_quietly(self._store, ticket.key)
        return ticket

    async def complete(self, op: Operation, upload_id: object) -> AssetUpload:
        """Commit the bytes uploaded for `upload_id` through the write protocol.

        With the operation's idempotency key, a completion repeating one that committed
        returns its result (the upload itself is gone by then). Audited as `upload_asset`.

        Raises:
            Forbidden: the upload_id is invalid, expired, or was issued to another agent.
            NotFound: nothing was uploaded (or the upload was already completed).
            InvalidArgument: the uploaded bytes do not match the declared size and sha256
                (the upload is discarded).
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; the upload is kept, retry.
        """
        token = upload_id if isinstance(upload_id, str) else ""
        subject = Subject("", "")
        audited = op.named(UPLOAD_OPERATION)
        try:
            idem = Idempotency.for_call(op, {"upload_id": token})
            replay = await self._replayed(op, idem)
            if replay is not None:
                return replay
            ticket = UploadTicket.from_claims(self._signer.verify(UPLOAD_PURPOSE, token))
            subject = Subject(ticket.book_id, ticket.path)
            if ticket.agent_id != op.agent_id:
                raise Forbidden("this upload was declared by another agent")
            staged = await self._stage_upload(ticket)
        except PanaversityFSError as error:
            await self._trail.refused(audited, subject, error)
            raise
        try:
            outcome = await self._files.commit(audited, staged, idem)
        except Unavailable:
            raise
        except PanaversityFSError:
            # The ticket's expected_hash can never pass now: the upload is useless.
            await _delete_quietly(self._store, ticket.key)
            raise
        await _delete_quietly(self._store, ticket.key)
        return self._links.stored(outcome, staged.content_type)

    async def _stage_upload(self, ticket: UploadTicket) -> StagedWrite:
        """Copy the uploaded object to a fresh staging key and check the copy against the ticket.

        Raises:
            NotFound: nothing was uploaded, or the upload vanished.
            InvalidArgument: the upload does not have the declared size and sha256 (discarded).
            Unavailable: storage failed (the upload is kept).
        """
        try:
            uploaded = await self._store.size(ticket.key)
        except BlobNotFound:
            raise NotFound(
                "nothing has been uploaded for this upload_id (or it was already completed: get_asset tells)"
            ) from None
        except StorageError as exc:
            logger.warning("could not stat an upload", exc_info=exc)
            raise Unavailable("the storage is unavailable; the upload is kept, retry") from None
        if uploaded != ticket.size:
            await _delete_quietly(self._store, ticket.key)
            raise InvalidArgument(
                "the uploaded object does not have the declared size; the upload was discarded, "
                "declare it again",
                declared_size=ticket.size,
                uploaded_size=uploaded,
            )
        staging_key = new_staging_key()
        staged_at = datetime.now(UTC)
        try:
            await self._store.copy(ticket.key, staging_key)
            digest, size, head = await self._digest(staging_key, ticket.size)
        except BlobNotFound:
            raise NotFound("the upload vanished (completed concurrently or expired)") from None
        except StorageError as exc:
            logger.warning("could not stage an upload", exc_info=exc)
            await _delete_quietly(self._store, staging_key)
            raise Unavailable("the storage is unavailable; the upload is kept, retry") from None
        if (size, digest) != (ticket.size, ticket.sha256):
            await _delete_quietly(self._store, staging_key)
            await _delete_quietly(self._store, ticket.key)
            raise InvalidArgument(
                "the uploaded bytes do not match the declared size and sha256; the upload was "
                "discarded, declare it again",
                declared_size=ticket.size,
                uploaded_size=size,
                declared_sha256=ticket.sha256,
                uploaded_sha256=digest,
            )
        target = Target.asset(ticket.book_id, ticket.path)
        content_type = sniff_content_type(head, target.path)
        return StagedWrite(target, staging_key, digest, size, ticket.expected, content_type, staged_at)

    async def _digest(self, key: str, limit: int) -> tuple[str, int, bytes]:
        """sha256, size and leading bytes of an object, reading at most `limit` + 1 bytes."""
        digest = hashlib.sha256()
        size = 0
        head = b""
        reader = await self._store.open_reader(key)
        try:
            while size <= limit:
                chunk = await reader.read(CHUNK_BYTES)
                if not chunk:
                    break
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                digest.update(chunk)
                size += len(chunk)
        finally:
            await reader.close()
        return digest.hexdigest(), size, head
