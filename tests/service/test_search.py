"""`glob_search` and `grep_search`: semantics against models, privacy, bounds, RE2 safety."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import time
from typing import Any

from fastmcp import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.books_support import lesson, write_all
from tests.conftest import Backends
from tests.support import BOOK, all_pages, call, client, error_of, op

TEXT = {
    lesson(1, 1, 1): "# Variables\nA variable names a value.\nvariables are cheap\n",
    lesson(1, 1, 1, ".summary"): "Summary: variable naming.\n",
    lesson(1, 1, 2): "no match here\n",
    lesson(1, 2, 1): "line one\nVariable two\nline three\nvariable four",
    lesson(2, 1, 3): "\n\n\nvariable at line 4\n",
}
ASSETS = [
    "static/images/logo.png",
    "static/images/a1.png",
    "static/slides/deck-1.pdf",
    "static/img/sub/x.svg",
]


def glob_model(pattern: str, path: str) -> bool:
    """Independent model: `**` is zero or more whole segments, other segments are fnmatch'ed."""

    def match(pattern_segments: list[str], segments: list[str]) -> bool:
        if not pattern_segments:
            return not segments
        head, rest = pattern_segments[0], pattern_segments[1:]
        if head == "**":
            return any(match(rest, segments[i:]) for i in range(len(segments) + 1))
        return bool(segments) and fnmatch.fnmatchcase(segments[0], head) and match(rest, segments[1:])

    return match(pattern.split("/"), path.split("/"))


def grep_model(pattern: str, files: dict[str, str], flags: int = 0) -> list[tuple[str, int]]:
    regex = re.compile(pattern, flags | re.MULTILINE)
    found: list[tuple[str, int]] = []
    for path in sorted(files):
        for number, line in enumerate(files[path].split("\n"), start=1):
            if regex.search(line):
                found.append((path, number))
    return found


async def grep_all(c: Client[Any], **arguments: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow grep cursors to the end; return all matches and every page."""
    pages = await all_pages(c, "grep_search", **arguments)
    assert all((page["reason"] is not None) == (page["next_cursor"] is not None) for page in pages)
    return [match for page in pages for match in page["hits"]], pages


async def test_glob_semantics_match_the_model(settings: Settings) -> None:
    from panaversity_fs.app.resources import open_resources

    async with open_resources(settings, background=False) as resources:
        from panaversity_fs.files.target import Target

        for path in ASSETS:
            await resources.files.write(
                op("upload_asset", "asset-seeder"),
                Target.asset(BOOK, path),
                b"bytes",
                hashlib.sha256(b"bytes").hexdigest(),
                None,
            )
    patterns = [
        "content/**/*.md",
        "content/*.md",
        "**/*.summary.md",
        "content/01-*/*/0?-lesson?.md",
        "content/0[12]-Part[12]/01-*/*",
        "static/**",
        "static/*/*.png",
        "static/images/[a-m]*",
        "**/x.svg",
        "**",
        "content/01-Part1/01-Chapter1/01-lesson1.md",
        "content/01-Part1/**/*[!1].md",
    ]
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, TEXT)
        every = sorted([*TEXT, *ASSETS])
        for pattern in patterns:
            result = await call(c, "glob_search", book_id=BOOK, pattern=pattern, limit=1000)
            expected = [p for p in every if glob_model(pattern, p)]
            assert [m["path"] for m in result["matches"]] == expected, pattern
            assert result["next_cursor"] is None
        one = (await call(c, "glob_search", book_id=BOOK, pattern="static/images/logo.png"))["matches"]
    assert one == [
        {
            "book_id": BOOK,
            "path": "static/images/logo.png",
            "file_hash": one[0]["file_hash"],
            "size": 5,
            "source": "base",
        }
    ]


async def test_glob_pages_and_bad_patterns(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, TEXT)
        await write_all(c, "another-book", {lesson(1, 1, 1): "x"})
        globbed = await all_pages(c, "glob_search", all_books=True, pattern="content/**", limit=2)
        pages = [f"{m['book_id']}:{m['path']}" for page in globbed for m in page["matches"]]
        expected = [f"another-book:{lesson(1, 1, 1)}"] + [f"{BOOK}:{p}" for p in sorted(TEXT)]
        assert pages == expected
        for bad in ("", "x" * 256, "content/\x00"):
            assert (await error_of(c, "glob_search", book_id=BOOK, pattern=bad))[
                "error"
            ] == "INVALID_ARGUMENT"
        assert (await error_of(c, "glob_search", pattern="**"))["error"] == "INVALID_ARGUMENT"
        assert (await error_of(c, "glob_search", book_id=BOOK, pattern="**", limit=1001))[
            "error"
        ] == "INVALID_ARGUMENT"
        stale = await call(c, "glob_search", book_id=BOOK, pattern="content/**", limit=1)
        other = await error_of(c, "glob_search", book_id=BOOK, pattern="**", cursor=stale["next_cursor"])
    assert other["error"] == "INVALID_ARGUMENT" and other["field"] == "cursor"


async def test_another_users_overlays_are_never_searched(settings: Settings) -> None:
    secret_path = lesson(3, 1, 1)
    async with client(create_server(settings)) as c:
        hashes = await write_all(c, BOOK, TEXT)
        await call(
            c,
            "write_content",
            book_id=BOOK,
            path=lesson(1, 1, 2),
            content="alice SECRET notes\n",
            user_id="alice",
            expected_hash=hashes[lesson(1, 1, 2)],
        )
        await call(
            c, "write_content", book_id=BOOK, path=secret_path, content="SECRET only\n", user_id="alice"
        )
        await call(
            c,
            "write_content",
            book_id="alice-only-book",
            path=lesson(1, 1, 1),
            content="SECRET",
            user_id="alice",
        )
        for who in ({}, {"user_id": "bob"}):
            for scope in ({"book_id": BOOK}, {"all_books": True}):
                grep = await call(c, "grep_search", pattern="SECRET", **who, **scope)
                glob = await call(c, "glob_search", pattern="**", **who, **scope)
                assert grep["hits"] == [] and grep["matches"] == 0, (who, scope)
                assert secret_path not in [m["path"] for m in glob["matches"]]
                assert {m["source"] for m in glob["matches"]} == {"base"}
                assert "alice-only-book" not in {m["book_id"] for m in glob["matches"]}
        alice = await call(c, "grep_search", pattern="SECRET", all_books=True, user_id="alice")
        alice_glob = await call(c, "glob_search", book_id=BOOK, pattern=secret_path, user_id="alice")
    assert [(m["book_id"], m["path"], m["source"]) for m in alice["hits"]] == [
        ("alice-only-book", lesson(1, 1, 1), "overlay"),
        (BOOK, lesson(1, 1, 2), "overlay"),
        (BOOK, secret_path, "overlay"),
    ]
    assert [m["source"] for m in alice_glob["matches"]] == ["overlay"]


async def test_grep_line_numbers_case_and_path_glob(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, TEXT)
        sensitive = await call(c, "grep_search", book_id=BOOK, pattern="variable")
        insensitive = await call(c, "grep_search", book_id=BOOK, pattern="^variable", case_sensitive=False)
        scoped = await call(
            c, "grep_search", book_id=BOOK, pattern="variable", path_glob="content/01-Part1/02-*/*"
        )
        anchored = await call(c, "grep_search", book_id=BOOK, pattern="four$")
    got = [(m["path"], m["line_number"]) for m in sensitive["hits"]]
    assert got == grep_model("variable", TEXT)
    assert [(m["path"], m["line_number"]) for m in insensitive["hits"]] == grep_model(
        "^variable", TEXT, re.IGNORECASE
    )
    assert [(m["path"], m["line_number"]) for m in scoped["hits"]] == [(lesson(1, 2, 1), 4)]
    assert [(m["path"], m["line_number"], m["line"]) for m in anchored["hits"]] == [
        (lesson(1, 2, 1), 4, "variable four")
    ]
    first = sensitive["hits"][0]
    assert (
        first["line"] == "A variable names a value."
        and first["source"] == "base"
        and len(first["file_hash"]) == 64
    )
    assert sensitive["files_searched"] == len(TEXT) and sensitive["next_cursor"] is None


async def test_grep_continuation_equals_one_shot(settings: Settings) -> None:
    files = {
        lesson(1, 1, n): "".join(f"hit {n}.{i}\n" if i % 3 else "miss\n" for i in range(12))
        for n in range(1, 6)
    }
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, files)
        one_shot = await call(c, "grep_search", book_id=BOOK, pattern="hit", max_results=1000)
        for size in (1, 3, 8):
            matches, pages = await grep_all(c, book_id=BOOK, pattern="hit", max_results=size)
            assert matches == one_shot["hits"], size
            assert all(p["matches"] == len(p["hits"]) <= size for p in pages)
            assert {p["reason"] for p in pages[:-1]} <= {"max_results"}
        other = await error_of(
            c, "grep_search", book_id=BOOK, pattern="miss", cursor=pages[0]["next_cursor"], max_results=8
        )
    assert len(one_shot["hits"]) == one_shot["matches"] == 5 * 8 and one_shot["next_cursor"] is None
    assert other["error"] == "INVALID_ARGUMENT"


async def test_long_lines_are_cut_around_the_match(settings: Settings) -> None:
    text = "a" * 5000 + "NEEDLE" + "b" * 5000 + "\n"
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, {lesson(1, 1, 1): text})
        result = await call(c, "grep_search", book_id=BOOK, pattern="NEEDLE")
    line = result["hits"][0]["line"]
    assert "NEEDLE" in line and len(line) <= 500


async def test_catastrophic_patterns_finish_quickly(settings: Settings) -> None:
    adversarial = {lesson(1, 1, n): ("a" * 3000 + "!\n") * 20 + "a" * 20000 for n in range(1, 4)}
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, adversarial)
        for pattern in ("(a+)+$", "(a|aa)*b", "(.*a){20}", "(a*)*b", "^(a|a?)+$", "(x+x+)+y"):
            started = time.perf_counter()
            result = await call(c, "grep_search", book_id=BOOK, pattern=pattern, max_results=1000)
            elapsed = time.perf_counter() - started
            assert elapsed < 2.0, (pattern, elapsed)
            assert result["files_searched"] == 3, pattern
            if pattern == "(a+)+$":
                # Python's re would backtrack forever here; `a$` matches the same lines.
                assert [(m["path"], m["line_number"]) for m in result["hits"]] == grep_model(
                    "a$", adversarial
                )


async def test_unsupported_regex_constructs_are_refused_with_the_reason(settings: Settings) -> None:
    async with client(create_server(settings)) as c:
        for pattern in (r"(a)\1", "(?=a)", "(?<!a)b", "a++", "(", "", "x" * 501):
            error = await error_of(c, "grep_search", book_id=BOOK, pattern=pattern)
            assert error["error"] == "INVALID_ARGUMENT", pattern
            assert error["field"] == "pattern"
        backref = await error_of(c, "grep_search", book_id=BOOK, pattern=r"(a)\1")
        bad_glob = await error_of(c, "grep_search", book_id=BOOK, pattern="a", path_glob="")
        bad_max = await error_of(c, "grep_search", book_id=BOOK, pattern="a", max_results=0)
    assert "\\1" in backref["reason"] and "backreferences" in backref["message"]
    assert bad_glob["error"] == bad_max["error"] == "INVALID_ARGUMENT"


async def test_time_budget_truncates_with_a_cursor_that_finishes_the_search(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", search_time_budget=0.000001)
    files = {lesson(1, 1, n): f"needle {n}\n" for n in range(1, 8)}
    async with client(create_server(settings)) as c:
        await write_all(c, BOOK, files)
        first = await call(c, "grep_search", book_id=BOOK, pattern="needle")
        matches, pages = await grep_all(c, book_id=BOOK, pattern="needle")
        glob_first = await call(c, "glob_search", all_books=True, pattern="**")
    assert first["reason"] == "time_budget" and first["next_cursor"]
    assert first["files_searched"] >= 1
    assert [(m["path"], m["line_number"]) for m in matches] == grep_model("needle", files)
    assert len(pages) > 1 and sum(p["files_searched"] for p in pages) == len(files)
    assert glob_first["next_cursor"] is None  # one book: a glob always examines at least one book


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(st.text(alphabet="abc \n", max_size=30), max_size=12).map("".join),
    pattern=st.sampled_from(["a", "ab", "^a", "b$", "[ab]c", "^$", "a+", "c c", "^[^a]*$"]),
    slice_bytes=st.integers(min_value=1, max_value=40),
    wanted=st.integers(min_value=1, max_value=3),
)
def test_sliced_search_finds_exactly_the_matching_lines(
    text: str, pattern: str, slice_bytes: int, wanted: int
) -> None:
    """However small the slices (windows inside long lines included) and however often the
    search pauses, it reports each matching line once, in order, with its number."""
    from panaversity_fs.books import search

    regex = search.compile_regex(pattern, True)
    scan = search.FileScan(regex, text.encode())
    scan._slice = slice_bytes  # pyright: ignore[reportPrivateUsage]
    found: list[tuple[int, bytes]] = []
    for _ in range(10_000):
        if scan.done:
            break
        found += [(hit.number, hit.text) for hit in scan.step(wanted)]
    expected = [
        (number, line.encode())
        for number, line in enumerate(text.split("\n"), start=1)
        if re.search(pattern, line)
    ]
    if text.endswith("\n") or text == "":
        expected = [item for item in expected if item[0] <= text.count("\n")]
    assert found == expected
