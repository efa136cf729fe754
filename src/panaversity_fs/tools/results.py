"""How tool results go on the wire: content once.

A model reads the content blocks; programs read the structured result. So a read's markdown
goes in a text block as it is (never escaped inside a JSON copy), the files of a page as
embedded resources, an image as an image block, a download URL as a resource link; the
structured result describes them (hashes, versions, cursors) and carries no content. Its compact
JSON also goes in one text block, because hosts show models the content blocks only, and an
agent needs a file's `file_hash` to change it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, cast

from fastmcp.tools.base import ToolResult
from mcp_types import (
    AudioContent,
    BlobResourceContents,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel, TypeAdapter

from panaversity_fs.books.results import GrepFound
from panaversity_fs.builds.results import ChangesRead
from panaversity_fs.paths import book_uri

MARKDOWN = "text/markdown"


def lesson(uri: str, text: str) -> EmbeddedResource:
    """A lesson's markdown as an embedded resource named by its `book://` URI."""
    return EmbeddedResource(
        type="resource", resource=TextResourceContents(uri=uri, mime_type=MARKDOWN, text=text)
    )


def described(info: BaseModel) -> dict[str, Any]:
    """The structured form of `info`: JSON types, absent fields left out."""
    return info.model_dump(mode="json", exclude_none=True)


def info_block(structured: dict[str, Any]) -> TextContent:
    """The structured result as one compact JSON text block, for models."""
    return TextContent(type="text", text=json.dumps(structured, ensure_ascii=False, separators=(",", ":")))


def plain(info: BaseModel, *extra: ContentBlock) -> ToolResult:
    """A result with no content to carry: its description, and any link or image blocks."""
    structured = described(info)
    return ToolResult(content=[*extra, info_block(structured)], structured_content=structured)


def markdown(text: str, info: BaseModel) -> ToolResult:
    """A read file: its markdown as it is, then its description."""
    structured = described(info)
    return ToolResult(
        content=[TextContent(type="text", text=text), info_block(structured)], structured_content=structured
    )


def files(
    book_id: str, user_id: str | None, paths: Sequence[str], texts: Sequence[str], info: BaseModel
) -> ToolResult:
    """Several files: each as an embedded markdown resource, then the description of them all."""
    structured = described(info)
    blocks: list[ContentBlock] = [
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri=book_uri(book_id, path, user_id), mime_type=MARKDOWN, text=text
            ),
        )
        for path, text in zip(paths, texts, strict=True)
    ]
    return ToolResult(content=[*blocks, info_block(structured)], structured_content=structured)


def binary(data: bytes, mime_type: str, book_id: str, path: str) -> ContentBlock:
    """An asset's bytes: image or audio content a model can perceive, else an embedded blob."""
    encoded = base64.b64encode(data).decode("ascii")
    if mime_type.startswith("image/"):
        return ImageContent(type="image", data=encoded, mime_type=mime_type)
    if mime_type.startswith("audio/"):
        return AudioContent(type="audio", data=encoded, mime_type=mime_type)
    blob = BlobResourceContents(uri=book_uri(book_id, path), mime_type=mime_type, blob=encoded)
    return EmbeddedResource(type="resource", resource=blob)


def link(url: str, name: str, mime_type: str | None = None, description: str | None = None) -> ResourceLink:
    """A resource link block for a download URL."""
    return ResourceLink(
        type="resource_link", uri=url, name=name, mime_type=mime_type, description=description
    )


def grep(found: GrepFound, user_id: str | None) -> ToolResult:
    """Grep matches: per file, its URI then `line: text` for each match; then the page's counts
    and cursor (the files' hashes are for programs, in the structured result: a model reads a
    file, and so gets its hash, before changing it)."""
    structured = described(found.result)
    lines: list[str] = []
    for file, texts in zip(found.result.files, found.texts, strict=True):
        lines.append(book_uri(file.book_id, file.path, user_id))
        lines.extend(f"{number}: {text}" for number, text in zip(file.lines, texts, strict=True))
    blocks: list[ContentBlock] = [TextContent(type="text", text="\n".join(lines))] if lines else []
    counts = {key: value for key, value in structured.items() if key != "files"}
    return ToolResult(content=[*blocks, info_block(counts)], structured_content=structured)


def output_schema(shape: Any) -> dict[str, Any]:
    """The output schema of a tool returning `shape` (a model class or a union of them).

    Results leave absent what is null, so no nullable field is required.
    """
    schema = TypeAdapter(shape).json_schema()
    _optional_nulls(schema)
    return schema if schema.get("type") == "object" else {"type": "object", **schema}


def merged_output_schema(description: str, *shapes: type[BaseModel]) -> dict[str, Any]:
    """One object schema every result of `shapes` follows: each shape's properties (described as
    the first shape having them describes them), required where every shape requires them. A
    client checks one object against it, where an `anyOf` of the shapes made it try each (the
    fastmcp client spent two and a half times a single shape's cost).

    Raises:
        ValueError: two shapes give one property different rules.
    """
    properties: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    required: set[str] | None = None
    for shape in shapes:
        schema = output_schema(shape)
        definitions |= schema.get("$defs", {})
        for name, spec in cast(dict[str, dict[str, Any]], schema["properties"]).items():
            known = properties.setdefault(name, spec)
            if _rules(known) != _rules(spec):
                raise ValueError(f"{shape.__name__}.{name} differs from an earlier shape's")
        own = set(cast(list[str], schema.get("required", [])))
        required = own if required is None else required & own
    merged: dict[str, Any] = {"type": "object", "description": description, "properties": properties}
    merged["required"] = [name for name in properties if name in (required or set())]
    if definitions:
        merged["$defs"] = definitions
    return merged


def _rules(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key not in ("description", "default", "title")}


def _optional_nulls(node: Any) -> None:
    if isinstance(node, list):
        for item in cast(list[Any], node):
            _optional_nulls(item)
        return
    if not isinstance(node, dict):
        return
    schema = cast(dict[str, Any], node)
    properties = cast(dict[str, Any], schema.get("properties", {}))
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if not _nullable(properties.get(name, {}))]
    for value in schema.values():
        _optional_nulls(value)


def _nullable(spec: dict[str, Any]) -> bool:
    options = cast(list[dict[str, Any]], spec.get("anyOf", []))
    return spec.get("type") == "null" or any(option.get("type") == "null" for option in options)


def changes(read: ChangesRead) -> ToolResult:
    """A page of changes: each text asked for as an embedded markdown resource, then the page."""
    feed = read.feed
    structured = described(feed)
    blocks: list[ContentBlock] = [
        lesson(book_uri(feed.book_id, change.path, change.user_id), text)
        for change, text in zip(feed.changed_files, read.texts, strict=True)
        if text is not None
    ]
    return ToolResult(content=[*blocks, info_block(structured)], structured_content=structured)
