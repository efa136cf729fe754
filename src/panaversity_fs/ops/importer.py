"""`panaversity-fs import`: load a Docusaurus-style book folder into the journal and storage.

`FOLDER/content/**` holds lessons and summaries, `FOLDER/static/**` assets; the rest of the
folder (config, sources) is not part of a book and is left alone. Every file goes through the
same path rules and write protocol as an MCP write (operation `import`, the given agent id):
new files are created, changed files replaced with their current hash as `expected_hash`,
identical files skipped, so a second run changes nothing. A file that does not fit is reported
with the reason and a suggestion, never dropped silently. Symlinks are never followed, and hard
links are refused: either could bring in a file from outside the folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panaversity_fs.app.resources import Resources
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.errors import InvalidPath, PanaversityFSError, SchemaViolation
from panaversity_fs.files.mime import sniff_content_type
from panaversity_fs.files.target import Target
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from panaversity_fs.paths import ASSET_TYPES, classify

ROOTS = ("content", "static")
"""The folders of a book folder that are imported."""

IMPORT_OPERATION = "import"
"""What the audit log calls each file's write."""

WRITE_CONCURRENCY = 8
"""Files written at once (the database serialises the commits; storage uploads overlap)."""

_ASSET_FOLDER_BY_SUFFIX = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico"), "images"),
    **dict.fromkeys((".pdf", ".ppt", ".pptx", ".key", ".odp"), "slides"),
    **dict.fromkeys((".mp4", ".webm", ".mov", ".mkv"), "videos"),
    **dict.fromkeys((".mp3", ".wav", ".ogg", ".m4a", ".flac"), "audio"),
}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A file that was not imported, why, and what to do about it."""

    path: str
    reason: str
    suggestion: str


@dataclass(slots=True)
class ImportReport:
    """What an import did (or, with `dry_run`, would do)."""

    book_id: str
    dry_run: bool
    created: list[str] = field(default_factory=list[str])
    updated: list[str] = field(default_factory=list[str])
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list[Rejected])

    @property
    def ok(self) -> bool:
        """Whether every file was imported (or already there)."""
        return not self.rejected

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        return {
            "book_id": self.book_id,
            "dry_run": self.dry_run,
            "created": len(self.created),
            "updated": len(self.updated),
            "unchanged": self.unchanged,
            "rejected": len(self.rejected),
            "rejected_files": [
                {"path": r.path, "reason": r.reason, "suggestion": r.suggestion}
                for r in sorted(self.rejected, key=lambda r: r.path)
            ],
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular file found under content/ or static/: its book path and where it is on disk."""

    path: str
    disk: Path


def scan(folder: Path) -> tuple[list[Candidate], list[Rejected]]:
    """Walk `folder/content` and `folder/static` without following symlinks.

    Hidden entries and symlinks are rejected (a hidden folder once, not per file inside it),
    as is anything that is not a regular file.
    """
    found: list[Candidate] = []
    rejected: list[Rejected] = []
    for root in ROOTS:
        top = folder / root
        if top.is_symlink():
            rejected.append(_symlink(root))
        elif top.is_dir():
            _walk(top, root, found, rejected)
    return found, rejected


def _walk(directory: Path, relative: str, found: list[Candidate], rejected: list[Rejected]) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        rejected.append(
            Rejected(relative, f"cannot list the folder: {exc.strerror}", "check its permissions")
        )
        return
    for entry in entries:
        path = f"{relative}/{entry.name}"
        if entry.name.startswith("."):
            what = "folder" if entry.is_dir(follow_symlinks=False) else "file"
            rejected.append(
                Rejected(
                    path,
                    f"hidden {what}",
                    "hidden files are not part of a book; rename it without the leading '.' "
                    "if it belongs in the book",
                )
            )
        elif entry.is_symlink():
            rejected.append(_symlink(path))
        elif entry.is_dir(follow_symlinks=False):
            _walk(Path(entry.path), path, found, rejected)
        elif entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_nlink > 1:
            rejected.append(_hard_link(path))
        elif entry.is_file(follow_symlinks=False):
            found.append(Candidate(path, Path(entry.path)))
        else:
            rejected.append(Rejected(path, "not a regular file", "replace it with a regular file"))


def _symlink(path: str) -> Rejected:
    return Rejected(
        path, "symbolic link (never followed)", "copy the file it points to into the folder instead"
    )


def _hard_link(path: str) -> Rejected:
    return Rejected(
        path,
        "hard link (the same file is reachable from elsewhere, perhaps outside the book folder; "
        "links are never followed)",
        "copy the file into the folder instead of linking it",
    )


def read_regular(disk: Path, single_link: bool = False) -> bytes:
    """Read a regular file without following a symlink swapped in since the scan; with
    `single_link`, refuse a file with more than one hard link.

    Raises:
        OSError: it cannot be opened, or is now a symlink, not a regular file, or a hard link.
    """
    fd = os.open(disk, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if single_link and info.st_nlink > 1:
            raise OSError("a hard link (the same file is reachable from elsewhere)")
        return handle.read()


def suggestion_for(path: str, error: PanaversityFSError) -> str:
    """A concrete fix for a path the book schema refuses."""
    segments = path.split("/")
    name = segments[-1]
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if isinstance(error, InvalidPath):
        return "rename it: path segments may hold letters, digits, '-', '_' and '.' only"
    if segments[0] == "content":
        if suffix != ".md":
            folder = _ASSET_FOLDER_BY_SUFFIX.get(suffix, "images")
            return f"only markdown lessons go under content/; move assets to static/{folder}/{name}"
        return (
            "move it to content/{NN-Part}/{NN-Chapter}/{NN-name}.md "
            "(e.g. content/01-Introduction/01-Basics/01-hello.md)"
        )
    if segments[0] == "static":
        folder = _ASSET_FOLDER_BY_SUFFIX.get(suffix, "images")
        if len(segments) < 3 or segments[1] not in ASSET_TYPES:
            return f"move it to static/{folder}/{name} (asset folders: {', '.join(ASSET_TYPES)})"
        return "rename it with letters, digits, '-', '_' and '.' only"
    example = error.details.get("example")
    return f"follow the book schema, e.g. {example}" if example else "follow the book schema"


class Importer:
    """Imports one folder into one book with one agent id."""

    def __init__(
        self,
        resources: Resources,
        book_id: str,
        agent_id: str,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._resources = resources
        self._book = book_id
        self._agent = Caller(agent_id)
        self._dry_run = dry_run
        self._progress = progress

    async def run(self, folder: Path) -> ImportReport:
        """Import `folder`; return what happened (rejections included).

        Raises:
            Unavailable: the database failed before anything was imported.
        """
        report = ImportReport(self._book, self._dry_run)
        candidates, rejected = scan(folder)
        report.rejected.extend(rejected)
        async with self._resources.db.read() as conn:
            rows = await journal.view(conn, self._book, None)
        current = {row.path: row.sha256 for row in rows}
        seen: set[str] = set()
        gate = asyncio.Semaphore(WRITE_CONCURRENCY)
        done = 0
        total = len(candidates)

        async def one(candidate: Candidate) -> None:
            nonlocal done
            async with gate:
                await self._import_one(candidate, current, seen, report)
            done += 1
            if self._progress is not None:
                self._progress(done, total)

        await asyncio.gather(*(one(candidate) for candidate in sorted(candidates, key=lambda c: c.path)))
        return report

    async def _import_one(
        self, candidate: Candidate, current: dict[str, str | None], seen: set[str], report: ImportReport
    ) -> None:
        prepared = await self._prepare(candidate, seen)
        if isinstance(prepared, Rejected):
            report.rejected.append(prepared)
            return
        target, data, content_type = prepared
        existing = current.get(target.path)
        digest = hashlib.sha256(data).hexdigest()
        if existing == digest:
            report.unchanged += 1
            return
        if self._dry_run:
            (report.updated if existing else report.created).append(target.path)
            return
        try:
            op = Operation.begin(self._agent, IMPORT_OPERATION)
            outcome = await self._resources.files.write(op, target, data, digest, existing, content_type)
        except PanaversityFSError as error:
            report.rejected.append(
                Rejected(candidate.path, f"{error.code}: {error.message}", "run the import again")
            )
            return
        (report.created if outcome.mode == "created" else report.updated).append(target.path)

    async def _prepare(
        self, candidate: Candidate, seen: set[str]
    ) -> tuple[Target, bytes, str | None] | Rejected:
        """Validate a file's path and bytes; return its write target, bytes and MIME type."""
        settings = self._resources.settings
        try:
            book_path = classify(candidate.path)
        except (InvalidPath, SchemaViolation) as error:
            return Rejected(candidate.path, error.message, suggestion_for(candidate.path, error))
        if book_path.path in seen:
            return Rejected(
                candidate.path,
                f"another file has the same normalised (NFC) path {book_path.path}",
                "keep only one of the two files",
            )
        seen.add(book_path.path)
        limit = settings.max_content_bytes if book_path.kind == "content" else settings.max_asset_bytes
        too_large = Rejected(candidate.path, f"larger than the {limit}-byte limit", "split or shrink it")
        try:
            if candidate.disk.stat(follow_symlinks=False).st_size > limit:
                return too_large
            data = await asyncio.to_thread(read_regular, candidate.disk, True)
        except OSError as exc:
            return Rejected(candidate.path, f"cannot read it: {exc.strerror or exc}", "check its permissions")
        if len(data) > limit:
            return too_large
        if book_path.kind == "asset":
            name = book_path.path.rsplit("/", 1)[-1]
            return Target.asset(self._book, book_path.path), data, sniff_content_type(data, name)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(
                candidate.path, f"not valid UTF-8 (byte {exc.start})", "re-save the file as UTF-8"
            )
        return Target.content(self._book, book_path.path), data, None


def terminal_progress(label: str) -> Callable[[int, int], None] | None:
    """A `\\r` counter on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label} {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show
