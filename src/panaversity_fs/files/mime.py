"""MIME types from the bytes themselves (magic numbers), never from the file name alone."""

from __future__ import annotations

import puremagic

OCTET_STREAM = "application/octet-stream"

SNIFF_BYTES = 8192
"""Bytes inspected: enough for every signature puremagic knows and for the text heuristics."""

COMPRESSED_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "video/mp4",
        "video/webm",
        "video/quicktime",
        "video/x-matroska",
        "audio/mpeg",
        "audio/ogg",
        "audio/mp4",
        "audio/aac",
        "audio/flac",
        "application/zip",
        "application/gzip",
        "application/x-7z-compressed",
        "application/pdf",
        "font/woff",
        "font/woff2",
    }
)
"""Types whose bytes are already compressed: archives store them instead of deflating them."""

_TEXT_BY_SUFFIX = {
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".yml": "text/plain; charset=utf-8",
}


def sniff_content_type(data: bytes, filename: str) -> str:
    """Return the MIME type of `data`, decided by its leading bytes.

    The name only refines text: a UTF-8 text file is `text/plain` unless its suffix names a
    harmless text format (markdown, JSON, CSV, YAML). SVG is recognised by content and reported
    as `image/svg+xml`; callers must serve it so that it cannot run script (see the asset
    routes). Unrecognised binary data is `application/octet-stream`.
    """
    head = data[:SNIFF_BYTES]
    if head:
        try:
            found: object = puremagic.from_string(head, mime=True)  # pyright: ignore[reportUnknownMemberType]
        except (puremagic.PureError, ValueError):
            found = ""
        if found:
            return str(found)
    text = _as_text(head)
    if text is None:
        return OCTET_STREAM
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("<svg") or (stripped.startswith("<?xml") and "<svg" in stripped):
        return "image/svg+xml"
    suffix = filename[filename.rfind(".") :].lower() if "." in filename else ""
    return _TEXT_BY_SUFFIX.get(suffix, "text/plain; charset=utf-8")


def is_compressed(content_type: str | None) -> bool:
    """Whether bytes of this type gain nothing from deflate."""
    return content_type is not None and content_type.split(";")[0] in COMPRESSED_TYPES


def _as_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sample may cut a multi-byte character at its end.
        if exc.start >= len(head) - 3:
            return head[: exc.start].decode("utf-8", errors="strict")
        return None
