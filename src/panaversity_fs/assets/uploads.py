"""Asset uploads: inline (base64) and by URL, through `ContentService`'s write protocol.

Every asset write is a write of the content protocol (same `expected_hash` contract, journal
row with the sniffed MIME type, audit entry with the caller's agent id). Large files take a
detour first:

1. `upload_asset` with `size` and `sha256` signs an upload ticket naming a private key under
   `.pfs/uploads/` and hands out a URL for it: an S3 presigned PUT, or our own `PUT /uploads/`
   route on the fs backend.
2. The client sends the bytes there.
3. `complete_asset_upload` copies the uploaded object to a fresh staging key (a key nobody
   else can write, so the bytes hashed are the bytes committed), checks its size and sha256
   against the ticket, and commits it with `ContentService.commit_staged`.

Upload objects never completed are removed by recovery once their URL has expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from panaversity_fs.assets.common import (
    CHUNK_BYTES,
    UPLOAD_PURPOSE,
    AssetBase,
    asset_target,
    iso_time,
)
from panaversity_fs.assets.results import AssetUpload
from panaversity_fs.auth.identity import Caller
from panaversity_fs.content.service import Target
from panaversity_fs.errors import (
    Conflict,
    Forbidden,
    HashRequired,
    InvalidArgument,
    NotFound,
    PanaversityFSError,
    TooLarge,
    Unavailable,
)
from panaversity_fs.files.idempotency import Idempotency
from panaversity_fs.files.mime import SNIFF_BYTES, sniff_content_type
from panaversity_fs.paths import check_hash
from panaversity_fs.signing import public_base_url
from panaversity_fs.storage.blobs import (
    BlobNotFound,
    StorageError,
    new_staging_key,
    upload_key,
)

logger = logging.getLogger(__name__)

"""Leading bytes of an uploaded object kept for MIME sniffing."""


@dataclass(frozen=True, slots=True)
class UploadTicket:
    """The signed claims of an upload URL."""

    book_id: str
    path: str
    key: str
    size: int
    sha256: str
    expected: str | None
    agent_id: str

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> UploadTicket:
        """Rebuild a ticket from verified claims.

        Raises:
            Forbidden: the claims are not an upload ticket's.
        """
        book, path, key, size, digest = (claims.get(k) for k in ("b", "p", "k", "n", "h"))
        expected, agent = claims.get("e"), claims.get("a")
        if not (
            isinstance(book, str)
            and isinstance(path, str)
            and isinstance(key, str)
            and isinstance(size, int)
            and isinstance(digest, str)
            and isinstance(agent, str)
            and (expected is None or isinstance(expected, str))
        ):
            raise Forbidden("the signed URL is invalid")
        return cls(book, path, key, size, digest, expected, agent)

    def claims(self) -> dict[str, Any]:
        """The claims to sign."""
        return {
            "b": self.book_id,
            "p": self.path,
            "k": self.key,
            "n": self.size,
            "h": self.sha256,
            "e": self.expected,
            "a": self.agent_id,
        }


def decode_inline(value: object, limit: int) -> bytes:
    """Decode canonical standard base64 (padded, no whitespace) of at most `limit` bytes.

    Raises:
        InvalidArgument: not a string, not strict base64, or empty.
        TooLarge: over `limit` decoded bytes.
    """
    if not isinstance(value, str):
        raise InvalidArgument("binary_data must be a base64 string", field="binary_data")
    too_large = TooLarge(
        f"inline uploads are limited to {limit} bytes: call upload_asset with size and sha256 "
        "instead of binary_data to get an upload URL",
        limit=limit,
    )
    if len(value) > 4 * ((limit + 2) // 3):
        raise too_large
    invalid = InvalidArgument(
        "binary_data must be standard base64: padded, no whitespace or line breaks", field="binary_data"
    )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None
    # b64decode tolerates excess padding and stray low bits; one text per byte string.
    if base64.b64encode(data).decode("ascii") != value:
        raise invalid
    if len(data) > limit:
        raise too_large
    if not data:
        raise InvalidArgument("binary_data is empty", field="binary_data")
    return data


def contract_refusal(expected: str | None, current: str | None) -> PanaversityFSError | None:
    if expected is None and current is not None:
        return HashRequired(
            "the asset exists: pass its current hash as expected_hash to replace it", current_hash=current
        )
    if expected is not None and current is None:
        return NotFound("the asset does not exist: upload it without expected_hash")
    if expected is not None and expected != current:
        return Conflict("expected_hash is not the asset's current hash", current_hash=current)
    return None


class Uploads(AssetBase):
    """`upload_asset`, the fs upload route, and `complete_asset_upload`."""

    async def upload(
        self,
        caller: Caller,
        book_id: object,
        asset_type: object,
        filename: object,
        binary_data: object,
        expected_hash: object,
        size: object,
        sha256: object,
        idempotency_key: object = None,
    ) -> AssetUpload:
        """Store `binary_data` (base64), or, without it, hand out an upload URL for `size` bytes.

        With `idempotency_key`, an inline upload repeating one that committed returns its
        result (a declaration changes nothing, so it takes no key).

        Raises:
            InvalidPath, SchemaViolation, InvalidArgument, TooLarge: bad arguments (a reused key).
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; nothing was written.
        """
        started = time.perf_counter()
        idem: Idempotency | None = None
        try:
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
                data, actual = b"", declared_sha  # the bytes come later, by URL
            else:
                data = decode_inline(binary_data, self._settings.max_inline_asset_bytes)
                actual = hashlib.sha256(data).hexdigest()
                if (size is not None and size != len(data)) or declared_sha not in (None, actual):
                    raise InvalidArgument("size or sha256 does not match binary_data", size=len(data))
                declared_size = len(data)
                idem = Idempotency.for_call(
                    caller, "upload_asset", idempotency_key, target.arguments(expected, actual)
                )
                replay = await self._replayed(idem)
                if replay is not None:
                    return replay
        except PanaversityFSError as error:
            path = f"static/{asset_type}/{filename}"
            await self._content.audit_refusal(caller, "upload_asset", book_id, path, None, started, error)
            raise
        if binary_data is None:
            assert declared_sha is not None
            return await self.declare(caller, target, expected, declared_size, declared_sha, started)
        content_type = sniff_content_type(data, target.path)
        outcome = await self._content.write_bytes(
            caller, "upload_asset", target, data, actual, expected, content_type, started, idem
        )
        return self._stored(outcome, content_type)

    def _check_size(self, size: object) -> int:
        limit = self._settings.max_asset_bytes
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InvalidArgument("size must be a positive number of bytes", field="size")
        if size > limit:
            raise TooLarge(f"assets are limited to {limit} bytes", limit=limit)
        return size

    async def declare(
        self, caller: Caller, target: Target, expected: str | None, size: int, digest: str, started: float
    ) -> AssetUpload:
        # Refuse now what the commit would refuse, so nobody uploads megabytes in vain.
        row = await self._row(target)
        refusal = contract_refusal(expected, row.sha256 if row is not None else None)
        if refusal is not None:
            await self._content.audit_refusal(
                caller, "upload_asset", target.book_id, target.path, None, started, refusal
            )
            raise refusal
        ttl = self._settings.asset_url_ttl
        key = upload_key(int(time.time() + ttl) + 1)
        ticket = UploadTicket(target.book_id, target.path, key, size, digest, expected, caller.agent_id)
        token, expires = self._r.signer.sign(UPLOAD_PURPOSE, ticket.claims(), ttl)
        if self._store.backend == "fs":
            url, headers = f"{public_base_url(self._settings)}/uploads/{token}", {}
        else:
            try:
                presigned = await self._store.presign_write(key, max(1, int(ttl)))
            except StorageError as exc:
                logger.warning("could not presign an upload", exc_info=exc)
                raise Unavailable("the storage is unavailable; nothing was changed, retry later") from None
            url, headers = presigned.url, presigned.headers
        self._content.note_read(caller, "declare_upload", target.book_id, target.path, None, started)
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
            expires_at=iso_time(expires),
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
        ticket = UploadTicket.from_claims(self._r.signer.verify(UPLOAD_PURPOSE, token))
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
                await self._delete_quietly(ticket.key)
        return ticket

    async def complete(
        self, caller: Caller, upload_id: object, idempotency_key: object = None
    ) -> AssetUpload:
        """Commit the bytes uploaded for `upload_id` through the write protocol.

        With `idempotency_key`, a completion repeating one that committed returns its result
        (the upload itself is gone by then).

        Raises:
            Forbidden: the upload_id is invalid, expired, or was issued to another agent.
            NotFound: nothing was uploaded (or the upload was already completed).
            InvalidArgument: the uploaded bytes do not match the declared size and sha256
                (the upload is discarded).
            HashRequired, Conflict, NotFound: the `expected_hash` contract refused the write.
            Unavailable: the database or storage failed; the upload is kept, retry.
        """
        started = time.perf_counter()
        book_id: object = None
        path: object = None
        try:
            token = upload_id if isinstance(upload_id, str) else ""
            idem = Idempotency.for_call(
                caller, "complete_asset_upload", idempotency_key, {"upload_id": token}
            )
            replay = await self._replayed(idem)
            if replay is not None:
                return replay
            ticket = UploadTicket.from_claims(self._r.signer.verify(UPLOAD_PURPOSE, token))
            book_id, path = ticket.book_id, ticket.path
            if ticket.agent_id != caller.agent_id:
                raise Forbidden("this upload was declared by another agent")
            target = Target.asset(ticket.book_id, ticket.path)
            staging_key, staged_at = await self._stage_upload(ticket)
        except PanaversityFSError as error:
            await self._content.audit_refusal(
                caller, "upload_asset", book_id or "", path or "", None, started, error
            )
            raise
        try:
            digest, size, head = await self._digest(staging_key, ticket.size)
        except StorageError as exc:
            await self._delete_quietly(staging_key)
            failure = Unavailable("the storage is unavailable; the upload is kept, retry")
            logger.warning("could not hash an upload", exc_info=exc)
            await self._content.audit_refusal(
                caller, "upload_asset", target.book_id, target.path, None, started, failure
            )
            raise failure from None
        if (size, digest) != (ticket.size, ticket.sha256):
            await self._delete_quietly(staging_key)
            await self._delete_quietly(ticket.key)
            mismatch = InvalidArgument(
                "the uploaded bytes do not match the declared size and sha256; the upload was "
                "discarded, declare it again",
                declared_size=ticket.size,
                uploaded_size=size,
                declared_sha256=ticket.sha256,
                uploaded_sha256=digest,
            )
            await self._content.audit_refusal(
                caller, "upload_asset", target.book_id, target.path, None, started, mismatch
            )
            raise mismatch
        content_type = sniff_content_type(head, target.path)
        try:
            outcome = await self._content.commit_staged(
                caller,
                "upload_asset",
                target,
                staging_key,
                digest,
                size,
                ticket.expected,
                content_type,
                started,
                staged_at=staged_at,
                idem=idem,
            )
        except Unavailable:
            raise
        except PanaversityFSError:
            # The ticket's expected_hash can never pass now: the upload is useless.
            await self._delete_quietly(ticket.key)
            raise
        await self._delete_quietly(ticket.key)
        return self._stored(outcome, content_type)

    async def _stage_upload(self, ticket: UploadTicket) -> tuple[str, datetime]:
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
            await self._delete_quietly(ticket.key)
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
        except BlobNotFound:
            raise NotFound("the upload vanished (completed concurrently or expired)") from None
        except StorageError as exc:
            logger.warning("could not stage an upload", exc_info=exc)
            await self._delete_quietly(staging_key)
            raise Unavailable("the storage is unavailable; the upload is kept, retry") from None
        return staging_key, staged_at

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
