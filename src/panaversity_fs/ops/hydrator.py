"""`panaversity-fs hydrate`: bring a local book folder up to date from a running server.

The folder keeps `.panaversity-manifest.json` (`{book_id, server, manifest_hash, files: {path:
sha256}}`). A run asks `plan_build` for the changes since that manifest and downloads only the
added and modified files; when the server no longer knows the manifest, it compares local bytes
to the server's hashes instead, so nothing that already matches is fetched again. Every file is
written to a temporary file in its folder, fsynced, checked against its sha256, then renamed
into place. Deletions touch only files the manifest lists. The new manifest is written last;
if anything failed it is not advanced, and the next run resumes from the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from fastmcp import Client
from mcp_types import TextContent

from panaversity_fs.errors import PanaversityFSError
from panaversity_fs.ops.importer import read_regular
from panaversity_fs.paths import classify

MANIFEST_NAME = ".panaversity-manifest.json"
DOWNLOAD_CONCURRENCY = 8
"""Files fetched at once."""

CHUNK = 1024 * 1024


class HydrateError(Exception):
    """A file could not be brought up to date (the message says why)."""


@dataclass(slots=True)
class HydrateReport:
    """What a hydrate run did."""

    book_id: str
    server: str
    status: str = "changed"
    manifest_hash: str | None = None
    full_compare: bool = False
    total_files: int = 0
    downloaded: list[str] = field(default_factory=list[str])
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list[str])
    failed: dict[str, str] = field(default_factory=dict[str, str])

    @property
    def ok(self) -> bool:
        """Whether every file is up to date and verified."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        return {
            "book_id": self.book_id,
            "server": self.server,
            "status": self.status,
            "manifest_hash": self.manifest_hash,
            "manifest_advanced": self.ok,
            "full_compare": self.full_compare,
            "total_files": self.total_files,
            "downloaded": len(self.downloaded),
            "unchanged": self.unchanged,
            "deleted": len(self.deleted),
            "failed": len(self.failed),
            "failures": [{"path": p, "reason": r} for p, r in sorted(self.failed.items())],
        }


def load_manifest(folder: Path, book_id: str) -> dict[str, Any] | None:
    """The folder's stored manifest for `book_id`, or None (absent, unreadable, another book)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    stored = cast(dict[str, Any], data)
    files = stored.get("files")
    digest = stored.get("manifest_hash")
    if stored.get("book_id") != book_id or not isinstance(files, dict) or not isinstance(digest, str):
        return None
    entries = cast(dict[Any, Any], files)
    return {"manifest_hash": digest, "files": {str(p): str(h) for p, h in entries.items()}}


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temporary file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pfs-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def local_path(root: Path, path: str) -> Path:
    """Where a book path lives under `root`, refusing anything unsafe or behind a symlink.

    Raises:
        HydrateError: the server sent a path outside the book schema, or a folder on the way
            is a symlink.
    """
    try:
        canonical = classify(path).path
    except PanaversityFSError as error:
        raise HydrateError(f"refusing a path the book schema forbids: {error.message}") from None
    if canonical != path:
        raise HydrateError("refusing a non-canonical path")
    target = root.joinpath(*path.split("/"))
    parent = root
    for segment in path.split("/")[:-1]:
        parent = parent / segment
        if parent.is_symlink():
            raise HydrateError(f"{parent.relative_to(root)} is a symlink; not writing through it")
    return target


def _local_hash(target: Path) -> str | None:
    try:
        return hashlib.sha256(read_regular(target)).hexdigest()
    except OSError:
        return None


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of `url` (default ports filled in)."""
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)


class Hydrator:
    """One hydrate run of one book into one folder over an open MCP client."""

    def __init__(
        self,
        client: Client[Any],
        http: httpx.AsyncClient,
        book_id: str,
        folder: Path,
        server: str,
        progress: Callable[[int, int], None] | None = None,
        token: str | None = None,
        page_size: int | None = None,
    ) -> None:
        self._client = client
        self._page = {"limit": page_size} if page_size is not None else {}
        self._http = http
        self._book = book_id
        self._folder = folder
        self._root = folder.resolve()
        self._server = server
        self._progress = progress
        self._token = token

    def _credentials(self, url: str) -> dict[str, str]:
        """The bearer token, for a URL on the server it was given for only (a download URL is
        signed and needs none; one naming another host must never receive it)."""
        if self._token is None or origin(url) != origin(self._server):
            return {}
        return {"Authorization": f"Bearer {self._token}"}

    async def run(self) -> HydrateReport:
        """Bring the folder up to date.

        Raises:
            HydrateError: the server refused `plan_build` (the folder is untouched).
        """
        report = HydrateReport(self._book, self._server)
        stored = load_manifest(self._folder, self._book)
        target = stored["manifest_hash"] if stored else None
        plan = await self._whole_plan(target)
        report.status = plan["status"]
        report.manifest_hash = plan["manifest_hash"]
        report.total_files = plan["total_files"]
        managed: dict[str, str] = stored["files"] if stored else {}
        changes: list[dict[str, Any]] = plan["files"]
        if plan.get("target_found"):
            current = dict(managed)
            for change in changes:
                if change["change_type"] == "deleted":
                    current.pop(change["path"], None)
                else:
                    current[change["path"]] = change["current_hash"]
            wanted = {c["path"]: c["current_hash"] for c in changes if c["change_type"] != "deleted"}
            doomed = [c["path"] for c in changes if c["change_type"] == "deleted" and c["path"] in managed]
        else:
            report.full_compare = True
            current = {c["path"]: c["current_hash"] for c in changes}
            wanted = dict(current)
            doomed = [path for path in managed if path not in current]
        if report.status == "unchanged" and not doomed:
            report.unchanged = report.total_files
            return report
        await self._fetch_all(wanted, report)
        for path in sorted(doomed):
            self._delete(path, report)
        report.unchanged = report.total_files - len(report.downloaded) - len(report.failed)
        if report.ok:
            body = {
                "book_id": self._book,
                "server": self._server,
                "manifest_hash": plan["manifest_hash"],
                "files": dict(sorted(current.items())),
            }
            write_atomically(self._folder / MANIFEST_NAME, json.dumps(body, indent=1).encode("utf-8"))
        return report

    async def _whole_plan(self, target: str | None) -> dict[str, Any]:
        """`plan_build`'s first page with the files of every page.

        Raises:
            HydrateError: the server refused a page.
        """
        asked = {"book_id": self._book, "target_manifest_hash": target, **self._page}
        plan = await self._call("plan_build", **asked)
        files: list[dict[str, Any]] = list(plan["files"])
        cursor = plan.get("next_cursor")
        while cursor:
            page = await self._call("plan_build", **asked, cursor=cursor)
            files.extend(page["files"])
            cursor = page.get("next_cursor")
        return {**plan, "files": files}

    async def _fetch_all(self, wanted: dict[str, str], report: HydrateReport) -> None:
        gate = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
        done = 0

        async def one(path: str, digest: str) -> None:
            nonlocal done
            async with gate:
                try:
                    if await self._fetch(path, digest):
                        report.downloaded.append(path)
                except HydrateError as exc:
                    report.failed[path] = str(exc)
                except (OSError, httpx.HTTPError) as exc:
                    report.failed[path] = f"{type(exc).__name__}: {exc}"
            done += 1
            if self._progress is not None:
                self._progress(done, len(wanted))

        await asyncio.gather(*(one(path, digest) for path, digest in sorted(wanted.items())))

    async def _fetch(self, path: str, digest: str) -> bool:
        """Make the local file hold the bytes hashing to `digest`; False if it already did."""
        target = local_path(self._root, path)
        if await asyncio.to_thread(_local_hash, target) == digest:
            return False
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(self._root):
            raise HydrateError("the destination folder resolves outside the book folder")
        if path.startswith("content/"):
            await self._fetch_content(path, digest, target)
        else:
            await self._fetch_asset(path, digest, target)
        return True

    async def _fetch_content(self, path: str, digest: str, target: Path) -> None:
        result = await self._client.call_tool(
            "read_content", {"book_id": self._book, "path": path}, raise_on_error=False
        )
        first = result.content[0] if result.content else None
        if result.is_error or not isinstance(first, TextContent):
            text = first.text if isinstance(first, TextContent) else ""
            raise HydrateError(f"read_content failed: {text[:500]}")
        data = first.text.encode("utf-8")  # the markdown as it is: the first block of a read
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise HydrateError(f"sha256 mismatch: expected {digest}, received {actual}")
        await asyncio.to_thread(write_atomically, target, data)

    async def _fetch_asset(self, path: str, digest: str, target: Path) -> None:
        asset = await self._call("get_asset", book_id=self._book, path=path)
        url = asset.get("download_url")
        if not isinstance(url, str) or not url:
            raise HydrateError("get_asset returned no download_url")
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, dir=target.parent, prefix=".pfs-", suffix=".tmp")
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as handle:
                async with self._http.stream("GET", url, headers=self._credentials(url)) as response:
                    if response.status_code != 200:
                        raise HydrateError(f"download answered HTTP {response.status_code}")
                    async for chunk in response.aiter_bytes(CHUNK):
                        hasher.update(chunk)
                        await asyncio.to_thread(handle.write, chunk)
                handle.flush()
                await asyncio.to_thread(os.fsync, handle.fileno())
            if hasher.hexdigest() != digest:
                raise HydrateError(f"sha256 mismatch: expected {digest}, received {hasher.hexdigest()}")
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _delete(self, path: str, report: HydrateReport) -> None:
        try:
            target = local_path(self._root, path)
        except HydrateError as exc:
            report.failed[path] = str(exc)
            return
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            report.failed[path] = f"cannot delete: {exc.strerror}"
            return
        report.deleted.append(path)
        parent = target.parent
        # Tidy folders the deletion emptied, never above content/ or static/.
        while parent != self._root and parent.parent != self._root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def _call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self._client.call_tool(tool, arguments, raise_on_error=False)
        if result.is_error:
            text = getattr(result.content[0], "text", "") if result.content else ""
            raise HydrateError(f"{tool} failed: {text[:500]}")
        if result.structured_content is None:
            raise HydrateError(f"{tool} returned no structured result")
        return dict(result.structured_content)
