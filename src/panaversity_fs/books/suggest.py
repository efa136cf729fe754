"""Concrete fixes for paths that break the book schema (used by `validate_book`).

Pure functions: given a bad path (and the numbers its siblings already use), propose the
nearest schema-valid path, e.g. `content/01-Intro/01-Basics/lesson.md` →
`content/01-Intro/01-Basics/01-lesson.md`, `Part 1` → `01-Part-1`, `.MD` → `.md`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection

from panaversity_fs.paths import ASSET_TYPES

_NUMBERED = re.compile(r"([0-9]{1,2})(?:[\s_.-]+|(?=[A-Za-z]))(.*)")
_MEDIA = {
    "images": frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "bmp", "ico"}),
    "slides": frozenset({"pdf", "ppt", "pptx", "key", "odp"}),
    "videos": frozenset({"mp4", "webm", "mov", "mkv", "avi"}),
    "audio": frozenset({"mp3", "wav", "ogg", "m4a", "flac"}),
}
_TEXT = frozenset({"md", "markdown", "mdx", "txt"})


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def free_number(used: Collection[str]) -> str:
    """The smallest two-digit number (from 01) not in `used`."""
    for n in range(1, 100):
        if f"{n:02d}" not in used:
            return f"{n:02d}"
    return "99"


def numbered_name(segment: str, number: str = "01") -> str:
    """`segment` as `NN-Name`: keeps a leading number (zero-padded), else uses `number`."""
    match = _NUMBERED.fullmatch(segment.strip())
    digits, rest = (match[1].zfill(2), match[2]) if match else (number, segment)
    name = re.sub(r"[^A-Za-z0-9]+", "-", _ascii(rest)).strip("-") or "Untitled"
    return f"{digits}-{name}"


def split_extension(name: str) -> tuple[str, str]:
    """`(stem, lower-case extension)`; the extension is '' when there is none."""
    stem, dot, ext = name.rpartition(".")
    return (stem, ext.lower()) if dot and stem else (name, "")


def media_type(extension: str) -> str | None:
    """The asset folder a file with `extension` belongs in, or None if it is not media."""
    for kind, extensions in _MEDIA.items():
        if extension in extensions:
            return kind
    return None


def asset_name(name: str) -> str:
    """A file name that fits the asset schema (letters, digits, `-`, `_`, `.`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", _ascii(name)).strip("-.")
    return cleaned or "file"


def suggest_lesson(path: str, used_numbers: Collection[str] = ()) -> str:
    """The schema-valid lesson path nearest to a bad `content/...` (or unplaced) markdown path."""
    segments = [s for s in path.split("/") if s not in ("", ".", "..")]
    filename = segments[-1] if segments else "lesson.md"
    # Folders outside content/ say nothing about the part and chapter a file belongs to.
    folders = segments[1:-1] if segments and segments[0] == "content" else []
    stem, ext = split_extension(filename)
    summary = stem.lower().endswith(".summary")
    if summary:
        stem = stem[: -len(".summary")]
    if ext not in _TEXT:
        stem = filename
    part = numbered_name(folders[0]) if len(folders) >= 1 else "01-Part"
    chapter = numbered_name(folders[1]) if len(folders) >= 2 else "01-Chapter"
    lesson = numbered_name(stem, free_number(used_numbers))
    return f"content/{part}/{chapter}/{lesson}{'.summary' if summary else ''}.md"


def suggest_asset(path: str) -> str:
    """The schema-valid asset path nearest to a bad `static/...` (or unplaced) media path."""
    segments = [s for s in path.split("/") if s not in ("", ".", "..")]
    name = asset_name(segments[-1] if segments else "file")
    kind = segments[1] if len(segments) >= 3 and segments[0] == "static" else None
    if kind not in ASSET_TYPES:
        kind = media_type(split_extension(name)[1]) or "images"
    return f"static/{kind}/{name}"


def suggest_path(path: str, used_numbers: Collection[str] = ()) -> str:
    """The nearest schema-valid path for any bad book path (lesson or asset by its extension)."""
    extension = split_extension(path.rsplit("/", 1)[-1])[1]
    if media_type(extension) is not None or (path.startswith("static/") and extension not in _TEXT):
        return suggest_asset(path)
    return suggest_lesson(path, used_numbers)
