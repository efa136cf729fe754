"""S-5: the bad-input corpus (specs/test-catalogue.md S-5: unsafe paths, reserved names, invisible characters) through the MCP content tools.

Every corpus path is sent to `write_content`, `read_content` and `delete_content`, for the base
and for an overlay (`user_id="u1"`), on each database+store pairing. Each call must come back
as a typed refusal (`INVALID_PATH` or `SCHEMA_VIOLATION`, never `INTERNAL`) within 100 ms
(wall time around the call; the slowest call after a warm-up counts, and a call over budget is
timed up to twice more and counts with its best time, so that a scheduler stall on a loaded
machine is not taken for a slow code path), with an error text that leaks nothing (no traceback, no `/tmp`, no storage root). Afterwards
the store holds no object, nothing escaped the storage root, the journal has no row, and the
fsck oracle and the audit chain both pass.

One client per backend and one loop per group of calls (paths, hashes, payloads): problems are
collected and reported together, so a failure lists every offending input at once.
"""

from __future__ import annotations

import json
import os
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmcp import Client

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.journal_sql import all_rows
from panaversity_fs.storage.blobs import BlobStore
from tests.support import BOOK, LESSON, assert_invariants, client, with_content

BUDGET_SECONDS = 0.100
"""Longest a refusal may take, measured around the tool call (after one warm-up call)."""

RETIMINGS = 2
"""Extra timings of a call that went over budget; its best time counts (see `Refusals._best_time`)."""

UNSAFE = frozenset({"INVALID_PATH"})
TYPED = frozenset({"INVALID_PATH", "SCHEMA_VIOLATION"})
HEX64 = "0123456789abcdef" * 4
DIR = "content/01-a/02-b/"
"""A schema-valid part/chapter prefix, so content-shaped variants differ from a lesson only by the trick."""

CORPUS: list[tuple[str, frozenset[str]]] = [
    # 1-3: traversal
    ("../secret.md", UNSAFE),
    ("../../etc/passwd", UNSAFE),
    ("chapters/../../other-book/ch1.md", UNSAFE),
    # 4-5: absolute and UNC
    ("/etc/passwd", UNSAFE),
    ("//server/share/x.md", UNSAFE),
    # 6-7: backslashes
    ("..\\..\\windows\\win.ini", UNSAFE),
    ("chapters\\..\\..\\x.md", UNSAFE),
    # 8-11: percent-encoding, double encoding, overlong UTF-8
    ("%2e%2e%2fsecret.md", UNSAFE),
    ("%252e%252e%252fsecret.md", UNSAFE),
    ("..%2fsecret.md", UNSAFE),
    ("%c0%ae%c0%ae/secret.md", UNSAFE),
    ("\xc0\xae\xc0\xae/secret.md", TYPED),  # the overlong bytes, mis-decoded as Latin-1
    # 12: full-width dot and slash (and other dot look-alikes)
    ("．．／secret.md", UNSAFE),
    ("\u2024\u2024/secret.md", UNSAFE),
    ("\ufe52\ufe52/secret.md", UNSAFE),
    # 13-14: NUL
    ("ch1.md\x00.png", UNSAFE),
    ("ch1.md%00.png", UNSAFE),
    # 15-16: normalisation and case (safe, but outside the schema)
    (unicodedata.normalize("NFD", "café.md"), TYPED),
    (unicodedata.normalize("NFC", "café.md"), TYPED),
    ("Ch1.md", TYPED),
    ("ch1.md", TYPED),
    # 17-18: aliases of a/b.md and a trailing slash
    ("a//b.md", UNSAFE),
    ("a/./b.md", UNSAFE),
    ("./a/b.md", UNSAFE),
    ("a/b.md/", UNSAFE),
    # 19: dot, dot-dot, empty, blanks
    (".", UNSAFE),
    ("..", UNSAFE),
    ("", UNSAFE),
    (" ", TYPED),
    ("a/ ", TYPED),
    # 20: a symlink name (nothing may follow it)
    ("link/pwn.md", TYPED),
    # 21: drive letters
    ("C:/Temp/x.md", TYPED),
    ("C:\\x.md", UNSAFE),
    # 22: Windows device names
    ("CON", UNSAFE),
    ("nul.md", UNSAFE),
    ("aux", UNSAFE),
    # 23-24: length and depth
    ("a/" * 2048 + "a", UNSAFE),  # 4,097 bytes
    ("x" * 256, UNSAFE),  # one 256-byte segment
    ("a/" + "x" * 253 + ".md", UNSAFE),  # a 256-byte segment inside a path
    ("a/" * 1000 + "x.md", UNSAFE),  # 1,000 nested segments
    # 25-26: bidi override, CR/LF
    ("evil\u202edm.exe", UNSAFE),
    ("a\r\nb.md", UNSAFE),
    # 27: internal prefixes and dotfiles
    (".staging/x", UNSAFE),
    (".staging/0b6f3c1e-8d1b-4a8e-9f3c-2a5b7d9e1f00", UNSAFE),
    (".pfs/staging/" + "0" * 32, UNSAFE),
    ("blobs/" + HEX64, TYPED),
    (".git/config", UNSAFE),
    (".env", UNSAFE),
    # 28-29: another book, another user's overlay
    ("other-book/ch1.md", TYPED),
    ("users/u2/overlay/ch1.md", TYPED),
    ("books/other-book/" + LESSON, TYPED),
    # 30: glob, regex and LIKE wildcards
    ("**/*", TYPED),
    (".*", TYPED),
    ("(a+)+$", TYPED),
    ("%", TYPED),
    ("_", TYPED),
    # content-shaped variants: one trick away from a schema-valid lesson path
    (DIR + "../03-c.md", UNSAFE),
    (DIR + "03-c.md\x00", UNSAFE),
    (DIR + "03-c.md\x00.png", UNSAFE),
    (DIR + "03-c.summary.md\x00", UNSAFE),
    ("content/01-a/../../02-b/03-c.md", UNSAFE),
    ("content/../../../etc/passwd", UNSAFE),
    ("../" + BOOK + "/" + DIR + "03-c.md", UNSAFE),
    ("../other-book/" + DIR + "03-c.md", UNSAFE),
    ("static/img/../../" + DIR + "03-c.md", UNSAFE),
    (DIR + "./03-c.md", UNSAFE),
    ("./" + DIR + "03-c.md", UNSAFE),
    ("content//01-a/02-b/03-c.md", UNSAFE),
    ("/" + DIR + "03-c.md", UNSAFE),
    ("//" + DIR + "03-c.md", UNSAFE),
    (DIR + "03-c.md/", UNSAFE),
    ("content\\01-a\\02-b\\03-c.md", UNSAFE),
    (DIR + "..\\03-c.md", UNSAFE),
    (DIR + "%2e%2e/03-c.md", UNSAFE),
    (DIR + "03-c%2emd", UNSAFE),
    ("content%2f01-a%2f02-b%2f03-c.md", UNSAFE),
    (DIR + "03-c．md", UNSAFE),
    ("content／01-a／02-b／03-c.md", UNSAFE),
    (DIR + "03-c.md\r\n", UNSAFE),
    (DIR + "03-c.md\n", UNSAFE),
    (DIR + "03-c.md\x7f", UNSAFE),
    (DIR + "03-c.md\x85", UNSAFE),
    (DIR + "03-c\u202e.md", UNSAFE),
    (DIR + "03-c\u200b.md", UNSAFE),
    (DIR + "03-c\ufeff.md", UNSAFE),
    (DIR + "03-c\ud800.md", UNSAFE),
    (DIR + "03-c.md ", TYPED),
    (" " + DIR + "03-c.md", TYPED),
    (DIR + ".03-c.md", UNSAFE),
    (DIR + "03-c.md.", TYPED),
    ("content/~01-a/02-b/03-c.md", TYPED),
    (DIR + "CON", UNSAFE),
    (DIR + "nul.md", UNSAFE),
    (DIR + "03-" + "c" * 253 + ".md", UNSAFE),
    (DIR + "03-" + "c" * 600 + ".md", UNSAFE),
    ("content/" + "01-a/" * 1000 + "03-c.md", UNSAFE),
    ("C:/" + DIR + "03-c.md", TYPED),
    ("users/u2/" + DIR + "03-c.md", TYPED),
    (DIR + unicodedata.normalize("NFD", "03-café.md"), TYPED),
    # look-alike digits: must not become a second, confusable lesson key
    ("content/０１-a/02-b/03-c.md", TYPED),
    (DIR + "٠٣-c.md", TYPED),
    (DIR + "𝟎𝟑-c.md", TYPED),
]

MALFORMED_HASHES = ["", "*", HEX64[:63], HEX64.upper(), "A" + HEX64[1:], HEX64 + "0", "sha256:" + HEX64]
"""Item 47: never a hash (a valid-looking hash of another file is a CONFLICT/NOT_FOUND matter)."""

LONE_SURROGATES = ["\ud800", "bad \ud800 surrogate", "a\udfffb", "emoji half \ud83d"]
"""Item 50: text that has no UTF-8 encoding."""

TOOLS = ("write_content", "read_content", "delete_content")


def _arguments(tool: str, path: str, user_id: str | None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"book_id": BOOK, "path": path}
    if tool == "write_content":
        arguments["content"] = "# pwned\n"
    if user_id is not None:
        arguments["user_id"] = user_id
    return arguments


def _label(tool: str, arguments: dict[str, Any]) -> str:
    shown = {k: (v if len(repr(v)) < 80 else repr(v)[:60] + "...") for k, v in arguments.items()}
    return f"{tool}({', '.join(f'{k}={v!r}' for k, v in shown.items() if k != 'book_id')})"


@dataclass
class Refusals:
    """Sends calls that must be refused; collects every deviation and every duration."""

    c: Client[Any]
    leaks: tuple[str, ...]
    problems: list[str] = field(default_factory=list)
    durations: list[tuple[float, str]] = field(default_factory=list)
    calls: int = 0

    async def expect(self, tool: str, allowed: Iterable[str], /, **arguments: Any) -> dict[str, Any] | None:
        """Call `tool`; record a problem unless it fails with one of the `allowed` codes."""
        label = _label(tool, arguments)
        started = time.perf_counter()
        result = await self.c.call_tool(tool, arguments, raise_on_error=False)
        elapsed = time.perf_counter() - started
        self.calls += 1
        if self.calls > 1:  # the first call of a client is the warm-up
            self.durations.append((await self._best_time(tool, arguments, elapsed), label))
        text = "".join(getattr(block, "text", "") for block in result.content)
        for leak in self.leaks:
            if leak in text:
                self.problems.append(f"{label}: error text leaks {leak!r}: {text[:300]!r}")
        bad_chars = {c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs") and c not in "\n\t"}
        if bad_chars:
            self.problems.append(f"{label}: error text carries raw control characters {bad_chars!r}")
        if not result.is_error:
            self.problems.append(f"{label}: accepted, answered {text[:200]!r}")
            return None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            self.problems.append(f"{label}: error is not JSON: {text[:300]!r}")
            return None
        if not isinstance(payload, dict) or "message" not in payload:
            self.problems.append(f"{label}: error is not an error object: {text[:300]!r}")
            return None
        code = payload.get("error")
        if code not in set(allowed):
            self.problems.append(f"{label}: got {code}, expected one of {sorted(allowed)}: {text[:300]!r}")
        elif code == "INVALID_PATH" and not payload.get("reason"):
            self.problems.append(f"{label}: INVALID_PATH without a reason: {text[:300]!r}")
        elif code == "SCHEMA_VIOLATION" and not (payload.get("rule") and payload.get("example")):
            self.problems.append(f"{label}: SCHEMA_VIOLATION without rule/example: {text[:300]!r}")
        return payload

    async def _best_time(self, tool: str, arguments: dict[str, Any], elapsed: float) -> float:
        """`elapsed`, or for a call over budget the best of it and `RETIMINGS` repeats.

        A slow code path (E3: a NUL byte caused 6.3 s of storage retries) is slow every time; a
        scheduler stall on a loaded machine is not. Repeats of a refusal change nothing but the
        audit log.
        """
        best = elapsed
        for _ in range(RETIMINGS):
            if best < BUDGET_SECONDS:
                break
            started = time.perf_counter()
            await self.c.call_tool(tool, arguments, raise_on_error=False)
            best = min(best, time.perf_counter() - started)
        return best

    def check_latency(self) -> None:
        """Record a problem if the slowest call after the warm-up went over the budget."""
        assert self.durations, "no timed calls"
        slowest, label = max(self.durations)
        if slowest >= BUDGET_SECONDS:
            over = sorted((d, lab) for d, lab in self.durations if d >= BUDGET_SECONDS)[-5:]
            self.problems.append(
                f"slowest refusal took {slowest * 1000:.1f} ms at best of {RETIMINGS + 1} "
                f"(budget {BUDGET_SECONDS * 1000:.0f} ms): {label}; "
                f"over budget: {[(round(d * 1000, 1), lab) for d, lab in over]}"
            )


def _leaks(settings: Settings, tmp_path: Path) -> tuple[str, ...]:
    leaks = ["Traceback", "/tmp", str(tmp_path)]
    if settings.storage_backend == "fs":
        leaks.append(str(settings.storage_root))
    else:
        leaks.extend(s for s in (settings.s3_endpoint, settings.s3_root.strip("/")) if s)
    return tuple(leaks)


async def _stored_objects(settings: Settings, tmp_path: Path) -> list[str]:
    """Every object a refused call could have left: tool keys, staged bytes, escapes from the root."""
    found: list[str] = []
    if settings.storage_backend == "fs":
        root = Path(settings.storage_root).absolute()
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                relative = (Path(dirpath) / name).relative_to(root).as_posix()
                if not relative.startswith(".pfs/") or relative.startswith(".pfs/staging/"):
                    found.append(relative)
        # Anything that escaped the root lands next to it, in the test's own directory.
        for dirpath, dirnames, filenames in os.walk(tmp_path):
            if Path(dirpath) == tmp_path:
                dirnames[:] = [d for d in dirnames if (tmp_path / d).absolute() != root]
            for name in filenames:
                is_database = Path(dirpath) == tmp_path and name.startswith("pfs-") and ".db" in name
                if not is_database:
                    found.append(f"outside the storage root: {Path(dirpath, name)}")
        return found
    store = BlobStore.from_settings(settings)
    try:
        books = await store.list("books/")
        staged = await store.list(".pfs/staging/")
        everything = await store.list("")
    finally:
        store.close()
    found.extend(info.key for info in books + staged)
    found.extend(info.key for info in everything if not info.key.startswith(".pfs/"))
    return sorted(set(found))


async def _journal_rows(settings: Settings) -> list[Any]:
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return list(await all_rows(conn))
    finally:
        await db.dispose()


async def _assert_no_side_effect(settings: Settings, tmp_path: Path, refusals: Refusals) -> None:
    refusals.check_latency()
    stored = await _stored_objects(settings, tmp_path)
    if stored:
        refusals.problems.append(f"storage holds objects after refusals: {stored[:20]}")
    rows = await _journal_rows(settings)
    if rows:
        refusals.problems.append(
            f"journal holds rows after refusals: {[(r.path, r.user_id) for r in rows][:20]}"
        )
    assert not refusals.problems, (
        f"{len(refusals.problems)} problem(s) in {refusals.calls} calls:\n" + "\n".join(refusals.problems)
    )
    await assert_invariants(settings)


def test_corpus_is_complete() -> None:
    """The corpus holds the literal items the brief names, and no duplicates."""
    paths = [path for path, _ in CORPUS]
    assert len(paths) == len(set(paths))
    required = [
        "../secret.md",
        "../../etc/passwd",
        "chapters/../../other-book/ch1.md",
        "/etc/passwd",
        "//server/share/x.md",
        "..\\..\\windows\\win.ini",
        "chapters\\..\\..\\x.md",
        "%2e%2e%2fsecret.md",
        "%252e%252e%252fsecret.md",
        "..%2fsecret.md",
        "%c0%ae%c0%ae/secret.md",
        "\uff0e\uff0e\uff0fsecret.md",
        "ch1.md\x00.png",
        "ch1.md%00.png",
        "cafe\u0301.md",
        "a//b.md",
        "a/./b.md",
        "./a/b.md",
        "a/b.md/",
        ".",
        "..",
        "",
        " ",
        "a/ ",
        "C:/Temp/x.md",
        "C:\\x.md",
        "CON",
        "nul.md",
        "aux",
        "evil\u202edm.exe",
        "a\r\nb.md",
        ".staging/x",
        "blobs/" + HEX64,
        ".git/config",
        ".env",
        "content/01-a/02-b/../03-c.md",
        "content/01-a/02-b/03-c.md\x00",
    ]
    assert [p for p in required if p not in paths] == []
    assert any(len(p.encode()) == 4097 for p in paths)
    assert any(any(len(s.encode()) == 256 for s in p.split("/")) for p in paths)
    assert any(p.count("a/") >= 1000 for p in paths)


async def test_corpus_paths_are_refused_without_side_effects(settings: Settings, tmp_path: Path) -> None:
    """S-5: every corpus path, to every content tool, base and overlay, is a typed, fast refusal."""
    async with client(create_server(settings)) as c:
        refusals = Refusals(c, _leaks(settings, tmp_path))
        for tool in TOOLS:
            for path, allowed in CORPUS:
                for user_id in (None, "u1"):
                    await refusals.expect(tool, allowed, **_arguments(tool, path, user_id))
    assert refusals.calls == len(TOOLS) * 2 * len(CORPUS)
    await _assert_no_side_effect(settings, tmp_path, refusals)


async def test_malformed_expected_hash_is_invalid_argument(settings: Settings, tmp_path: Path) -> None:
    """Item 47: `""`, `*`, 63 hex characters, uppercase hex... are INVALID_ARGUMENT, not a lookup."""
    async with client(create_server(settings)) as c:
        refusals = Refusals(c, _leaks(settings, tmp_path))
        for value in MALFORMED_HASHES:
            for user_id in (None, "u1"):
                extra = {"user_id": user_id} if user_id else {}
                for tool, arguments in (
                    ("write_content", {"content": "x"}),
                    ("delete_content", {}),
                ):
                    payload = await refusals.expect(
                        tool,
                        {"INVALID_ARGUMENT"},
                        book_id=BOOK,
                        path=LESSON,
                        expected_hash=value,
                        **arguments,
                        **extra,
                    )
                    if payload and payload.get("field") != "expected_hash":
                        refusals.problems.append(f"{tool} hash={value!r}: field is {payload.get('field')!r}")
    await _assert_no_side_effect(settings, tmp_path, refusals)


async def test_lone_surrogate_content_is_invalid_argument(settings: Settings, tmp_path: Path) -> None:
    """Item 50: content that cannot be UTF-8 is INVALID_ARGUMENT and stores nothing, not even staged."""
    async with client(create_server(settings)) as c:
        refusals = Refusals(c, _leaks(settings, tmp_path))
        for content in LONE_SURROGATES:
            for user_id in (None, "u1"):
                extra = {"user_id": user_id} if user_id else {}
                payload = await refusals.expect(
                    "write_content", {"INVALID_ARGUMENT"}, book_id=BOOK, path=LESSON, content=content, **extra
                )
                if payload and payload.get("field") != "content":
                    refusals.problems.append(f"content={content!r}: field is {payload.get('field')!r}")
    await _assert_no_side_effect(settings, tmp_path, refusals)


async def test_corpus_refusals_leave_valid_files_untouched(settings: Settings, tmp_path: Path) -> None:
    """A refused traversal aimed at an existing lesson changes neither it nor its overlay."""
    target = DIR + "03-c.md"
    async with client(create_server(settings)) as c:
        base = await c.call_tool("write_content", {"book_id": BOOK, "path": target, "content": "base"})
        mine = await c.call_tool(
            "write_content", {"book_id": BOOK, "path": target, "content": "mine", "user_id": "u1"}
        )
        refusals = Refusals(c, _leaks(settings, tmp_path))
        for path in (
            DIR + "../02-b/03-c.md",
            "./" + target,
            target + "/",
            target + "\x00",
            "/" + target,
            target.replace("/", "\\"),
            target.replace(".", "．"),
        ):
            for tool in TOOLS:
                for user_id in (None, "u1"):
                    await refusals.expect(tool, TYPED, **_arguments(tool, path, user_id))
        read_base = await c.call_tool("read_content", {"book_id": BOOK, "path": target})
        read_mine = await c.call_tool("read_content", {"book_id": BOOK, "path": target, "user_id": "u1"})
    assert read_base.structured_content is not None and read_mine.structured_content is not None
    assert base.structured_content is not None and mine.structured_content is not None
    assert with_content(read_base)["content"] == "base"
    assert read_base.structured_content["file_hash"] == base.structured_content["file_hash"]
    assert with_content(read_mine)["content"] == "mine"
    assert read_mine.structured_content["file_hash"] == mine.structured_content["file_hash"]
    assert not refusals.problems, "\n".join(refusals.problems)
    rows = await _journal_rows(settings)
    assert sorted((r.path, r.user_id, r.version) for r in rows) == [
        (target, "__base__", 1),
        (target, "u1", 1),
    ]
    await assert_invariants(settings)
