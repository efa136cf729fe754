"""`panaversity_fs.paths`: the one module deciding path, book id, user id and hash rules (specs/contract.md).

Pure unit tests (accepted and refused forms, with the error class and `reason`) and hypothesis
properties (idempotence, cleanliness and containment of accepted paths, typed errors only,
NFC/NFD agreement).
"""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from panaversity_fs.errors import InvalidArgument, InvalidPath, SchemaViolation
from panaversity_fs.paths import (
    BASE_USER,
    BookPath,
    asset_path,
    canonicalize,
    check_book_id,
    check_hash,
    check_user_id,
    classify,
    content_path,
    storage_key,
)

HEX64 = "0123456789abcdef" * 4

# -- accepted paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "content/01-Intro/01-Basics/01-hello.md",
        "content/01-Intro/01-Basics/01-hello.summary.md",
        "content/00-A/99-B/42-c.md",
        "content/01-Part-Name/02-Chapter-2/03-naming-rules.md",
        "content/10-Python3/20-Py2to3/30-v2-vs-v3.summary.md",
        "content/01-intro/01-basics/01-Hello.md",
        "content/01-1/02-2/03-3.md",
        "content/01-Introduction/02-Variables/03-naming-rules.md",
    ],
)
def test_valid_content_paths_are_accepted_unchanged(path: str) -> None:
    assert classify(path) == BookPath(path, "content")
    assert content_path(path) == BookPath(path, "content")
    assert canonicalize(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "static/img/logo.png",
        "static/images/diagram-1.png",
        "static/slides/deck_01.pdf",
        "static/videos/2024/intro.mp4",
        "static/audio/ch1/lesson-02.mp3",
        "static/images/a/b/c/d.svg",
        "static/img/_hidden-ish.png",
        "static/img/archive.tar.gz",
    ],
)
def test_valid_asset_paths_are_accepted_unchanged(path: str) -> None:
    assert classify(path) == BookPath(path, "asset")
    assert asset_path(path) == BookPath(path, "asset")


def test_nfd_name_is_normalised_to_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "café.md")
    assert nfd != "café.md"
    assert canonicalize(nfd) == "café.md" == canonicalize("café.md")


# -- refused paths ----------------------------------------------------------------------------

LONG_SEGMENT = "a" * 129
LESSON_DIR = "content/01-Intro/01-Basics/"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("../secret.md", "traversal"),
        ("../../etc/passwd", "traversal"),
        ("chapters/../../other-book/ch1.md", "traversal"),
        ("content/01-a/02-b/../03-c.md", "traversal"),
        ("content/01-Intro/01-Basics/..", "traversal"),
        (".", "traversal"),
        ("..", "traversal"),
        ("a/./b.md", "traversal"),
        ("./a/b.md", "traversal"),
        ("/etc/passwd", "absolute"),
        ("//server/share/x.md", "absolute"),
        ("/content/01-Intro/01-Basics/01-hello.md", "absolute"),
        ("a/b.md/", "trailing_slash"),
        ("content/01-Intro/01-Basics/", "trailing_slash"),
        ("a//b.md", "empty_segment"),
        ("content//01-Intro/01-Basics/01-hello.md", "empty_segment"),
        ("..\\..\\windows\\win.ini", "backslash"),
        ("chapters\\..\\..\\x.md", "backslash"),
        ("C:\\x.md", "backslash"),
        ("content\\01-Intro\\01-Basics\\01-hello.md", "backslash"),
        ("%2e%2e%2fsecret.md", "percent"),
        ("%252e%252e%252fsecret.md", "percent"),
        ("..%2fsecret.md", "percent"),
        ("%c0%ae%c0%ae/secret.md", "percent"),
        ("ch1.md%00.png", "percent"),
        (LESSON_DIR + "01-hello%2emd", "percent"),
        ("．．／secret.md", "lookalike"),
        (LESSON_DIR + "01-hello．md", "lookalike"),
        ("content／01-Intro／01-Basics／01-hello.md", "lookalike"),
        ("a＼b.md", "lookalike"),
        ("C：/x.md", "lookalike"),
        ("\u2024\u2024/secret.md", "lookalike"),
        ("\ufe52\ufe52/secret.md", "lookalike"),
        ("ch1.md\x00.png", "control_character"),
        (LESSON_DIR + "01-hello.md\x00", "control_character"),
        ("a\r\nb.md", "control_character"),
        ("a\tb.md", "control_character"),
        ("a\x7fb.md", "control_character"),
        ("a\x85b.md", "control_character"),
        ("evil\u202edm.exe", "invisible"),
        ("a\u200bb.md", "invisible"),
        ("a\ufeffb.md", "invisible"),
        ("a\u2066b.md", "invisible"),
        ("a\ud800b.md", "invisible"),
        (" ", "edge"),
        ("a/ ", "edge"),
        (" a/b.md", "edge"),
        ("a/b.md ", "edge"),
        ("a/b.md.", "edge"),
        ("a/b..", "edge"),
        (".staging/x", "dot_prefix"),
        (".git/config", "dot_prefix"),
        (".env", "dot_prefix"),
        ("content/.01-Intro/01-Basics/01-hello.md", "dot_prefix"),
        ("content/01-Intro/01-Basics/.01-hello.md", "dot_prefix"),
        ("~/x.md", "tilde"),
        ("content/~01-Intro/01-Basics/01-hello.md", "tilde"),
        ("C:/Temp/x.md", "charset"),
        ("a b.md", "charset"),
        ("a*b.md", "charset"),
        ("**/*", "charset"),
        ("(a+)+$", "charset"),
        ("x\u0301.md", "charset"),
        ("a\u00adb.md", "charset"),
        ("CON", "reserved"),
        ("nul.md", "reserved"),
        ("aux", "reserved"),
        ("Com1.txt", "reserved"),
        ("static/img/lpt9.png", "reserved"),
        ("a/" * 2048 + "a", "too_long"),
        ("a" * 513, "too_long"),
        ("é" * 257, "too_long"),
        ("a" * 256, "too_long"),
        (LONG_SEGMENT + ".md", "too_long"),
        (LESSON_DIR + "01-" + "x" * 600 + ".md", "too_long"),
        ("a/" * 1000 + "x.md", "too_long"),
        ("a/" * 12 + "x.md", "too_deep"),
    ],
)
def test_unsafe_paths_are_invalid_path_with_reason(path: str, reason: str) -> None:
    for check in (canonicalize, classify, content_path, asset_path):
        with pytest.raises(InvalidPath) as raised:
            check(path)
        assert raised.value.code == "INVALID_PATH"
        assert raised.value.details["reason"] == reason, (path, raised.value.details)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"content/01-a/02-b/03-c.md", ["a"], {"p": 1}, object()])
def test_non_string_paths_are_invalid_path(value: object) -> None:
    with pytest.raises(InvalidPath) as raised:
        classify(value)
    assert raised.value.details["reason"] == "empty"


@pytest.mark.parametrize(
    "path",
    [
        "Ch1.md",
        "ch1.md",
        "café.md",
        "blobs/" + HEX64,
        "other-book/ch1.md",
        "users/u2/overlay/ch1.md",
        "link/pwn.md",
        "books/python-book/content/01-a/02-b/03-c.md",
        "content",
        "static",
        "content/01-Intro/01-Basics/01-hello.txt",
        "content/01-Intro/01-Basics/01-hello.MD",
        "content/01-Intro/01-Basics/01-hello",
        "content/01-Intro/01-hello.md",
        "content/01-Intro/01-Basics/01-More/01-hello.md",
        "content/1-Intro/01-Basics/01-hello.md",
        "content/001-Intro/01-Basics/01-hello.md",
        "content/01Intro/01-Basics/01-hello.md",
        "content/01-/01-Basics/01-hello.md",
        "content/01--Intro/01-Basics/01-hello.md",
        "content/01-Intro/01-Basics/lesson.summary.md",
        "content/01-Intro/01-Basics/01-hello.summary.summary.md",
        "content/01-Intro/01-Basics/01-hello.draft.md",
        "content/01-Intro/01-Basics/01-hel_lo.md",
        "content/01-Intro/01-Basics/01-café.md",
        "content/01-Intro/01-Basics/01-hello.md.md",
        "Content/01-Intro/01-Basics/01-hello.md",
        "static/img",
        "static/pdf/x.pdf",
        "static/IMG/x.png",
        "static/images/café.png",
        "static/images/-x.png",
    ],
)
def test_safe_paths_outside_the_schema_are_schema_violations(path: str) -> None:
    with pytest.raises(SchemaViolation) as raised:
        classify(path)
    error = raised.value
    assert error.code == "SCHEMA_VIOLATION"
    assert error.details["rule"] and error.details["example"]
    assert classify(error.details["example"]).path == error.details["example"]


def test_static_paths_are_not_lessons_and_lessons_are_not_assets() -> None:
    with pytest.raises(SchemaViolation):
        content_path("static/images/diagram-1.png")
    with pytest.raises(SchemaViolation):
        asset_path("content/01-Intro/01-Basics/01-hello.md")


def test_schema_violation_names_the_broken_level() -> None:
    with pytest.raises(SchemaViolation) as raised:
        content_path("content/01-Intro/Basics/01-hello.md")
    assert "chapter" in raised.value.message and "Basics" in raised.value.message
    with pytest.raises(SchemaViolation) as raised:
        content_path("content/01-Intro/01-hello.md")
    assert "exactly 3 levels" in raised.value.message


@pytest.mark.parametrize(
    "path",
    [
        "content/０１-Intro/０１-Basics/０１-hello.md",  # full-width digits (U+FF10..)
        "content/٠١-Intro/01-Basics/01-hello.md",  # Arabic-Indic digits (U+0660..)
        "content/𝟎𝟏-Intro/01-Basics/01-hello.md",  # mathematical bold digits (U+1D7CE..)
        "content/01-Intro/01-Basics/०१-hello.md",  # Devanagari digits (U+0966..)
    ],
)
def test_non_ascii_digits_are_not_lesson_numbers(path: str) -> None:
    """`NN` is two ASCII digits; look-alike digits must not make a second, confusable lesson key."""
    with pytest.raises((InvalidPath, SchemaViolation)):
        classify(path)


# -- storage keys -----------------------------------------------------------------------------


def test_storage_key_layout() -> None:
    path = "content/01-Intro/01-Basics/01-hello.md"
    assert storage_key("b1", path, None) == f"books/b1/{path}"
    assert storage_key("b1", path, BASE_USER) == f"books/b1/{path}"
    assert storage_key("b1", path, "u1") == f"books/b1/users/u1/{path}"


# -- book ids, user ids, hashes ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["ab", "python-book", "a1", "0-9", "a" * 63, "b-", "abc-def-123"])
def test_valid_book_ids(value: str) -> None:
    assert check_book_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "*",
        "a",
        "a" * 64,
        "-book",
        "Python-book",
        "python_book",
        "python.book",
        "python book",
        "python-book\n",
        "../book",
        "books/x",
        "__base__",
        "pythön",
        None,
        1,
        b"python-book",
    ],
)
def test_invalid_book_ids(value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_book_id(value)
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.details["field"] == "book_id"


@pytest.mark.parametrize("value", ["u1", "U", "user-123", "A_b-C", "a" * 100, "0", "base__"])
def test_valid_user_ids(value: str) -> None:
    assert check_user_id(value) == value


def test_missing_user_id_means_base() -> None:
    assert check_user_id(None) is None


@pytest.mark.parametrize(
    "value",
    [
        "__base__",
        BASE_USER,
        "",
        "*",
        "_u",
        "-u",
        "a" * 101,
        "u 1",
        "u/1",
        "../u2",
        "u1\n",
        "ü",
        "u.1",
        1,
        b"u1",
    ],
)
def test_invalid_user_ids(value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_user_id(value)
    assert raised.value.details["field"] == "user_id"


def test_valid_hashes() -> None:
    assert check_hash(HEX64) == HEX64
    assert check_hash(None) is None
    assert check_hash("f" * 64, field="hash") == "f" * 64


@pytest.mark.parametrize(
    "value",
    [
        "",
        "*",
        HEX64[:63],
        HEX64 + "0",
        HEX64.upper(),
        "A" + HEX64[1:],
        "g" + HEX64[1:],
        HEX64 + "\n",
        " " + HEX64[1:],
        "sha256:" + HEX64,
        b"0" * 64,
        0,
    ],
)
def test_invalid_hashes(value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_hash(value)
    assert raised.value.details["field"] == "expected_hash"


# -- properties -------------------------------------------------------------------------------

_PIECES = [
    *"abcxyzABZ0189",
    *"abc019",
    "-",
    "_",
    ".",
    ".",
    "..",
    "/",
    "/",
    "~",
    " ",
    "%",
    "%2e",
    "%2f",
    "\\",
    ":",
    "*",
    "é",
    "e\u0301",
    "\u0301",
    "ǖ",
    "u\u0308\u0304",
    "Å",
    "\u212b",
    "ß",
    "ﬁ",
    "．",
    "／",
    "＼",
    "０",
    "１",
    "٣",
    "\u2024",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\u3000",
    "\x00",
    "\n",
    "\x7f",
    "\x85",
    "\ud800",
    "\udfff",
    ".md",
    ".summary",
    "content/",
    "static/img/",
    "01-",
    "CON",
    "nul",
]
_PIECE = st.sampled_from(_PIECES)

path_like = st.lists(_PIECE, min_size=1, max_size=24).map("".join)
"""Strings made of path-ish pieces: separators, dots, encodings, look-alikes, controls."""

_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,12}", fullmatch=True)
_NN = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")
content_paths = st.builds(
    lambda nn1, n1, nn2, n2, nn3, n3, summary: (
        f"content/{nn1}-{n1}/{nn2}-{n2}/{nn3}-{n3}{'.summary' if summary else ''}.md"
    ),
    _NN,
    _NAME,
    _NN,
    _NAME,
    _NN,
    _NAME,
    st.booleans(),
)
"""Paths that follow the lesson schema."""

_RESERVED_STEMS = {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}
_ASSET_SEGMENT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,10}(\.[a-z0-9]{1,4})?", fullmatch=True).filter(
    lambda s: s.split(".")[0].lower() not in _RESERVED_STEMS
)
asset_paths = st.builds(
    lambda kind, segments: "/".join(["static", kind, *segments]),
    st.sampled_from(["img", "images", "slides", "videos", "audio"]),
    st.lists(_ASSET_SEGMENT, min_size=1, max_size=4),
)
"""Paths that follow the asset schema."""

with_surrogates = st.text(alphabet=st.one_of(st.characters(categories=["Cs"]), st.characters()))
any_text = st.one_of(st.text(), with_surrogates, path_like, content_paths, asset_paths)


def _accepted(raw: str) -> str | None:
    try:
        return canonicalize(raw)
    except InvalidPath:
        return None


@given(any_text)
def test_canonicalize_is_idempotent(raw: str) -> None:
    path = _accepted(raw)
    if path is not None:
        assert canonicalize(path) == path


@given(any_text)
@example("café.md")
@example(unicodedata.normalize("NFD", "café.md"))
def test_accepted_paths_are_clean(raw: str) -> None:
    path = _accepted(raw)
    if path is None:
        return
    segments = path.split("/")
    assert ".." not in segments and "." not in segments
    assert "" not in segments
    assert not path.startswith("/") and not path.endswith("/")
    assert "\\" not in path and "%" not in path
    assert all(unicodedata.category(c) not in ("Cc", "Cs", "Cf", "Zl", "Zp") for c in path), ascii(path)
    assert all(c.isprintable() for c in path), ascii(path)
    assert not any(s.startswith(".") for s in segments)
    assert unicodedata.is_normalized("NFC", path)
    assert len(path.encode("utf-8")) <= 512


@given(any_text, st.sampled_from([None, "u1", BASE_USER]))
def test_accepted_paths_never_escape_the_book(raw: str, user_id: str | None) -> None:
    path = _accepted(raw)
    if path is None:
        return
    joined = f"books/b/{path}"
    assert posixpath.normpath(joined) == joined
    assert posixpath.normpath(joined).startswith("books/b/")
    key = storage_key("b", path, user_id)
    assert posixpath.normpath(key) == key
    prefix = "books/b/" if user_id in (None, BASE_USER) else f"books/b/users/{user_id}/"
    assert key == prefix + path


@given(any_text)
def test_classify_raises_only_typed_path_errors(raw: str) -> None:
    try:
        result = classify(raw)
    except (InvalidPath, SchemaViolation) as error:
        assert error.code in ("INVALID_PATH", "SCHEMA_VIOLATION")
        error.to_json()  # the wire form must render, whatever the input
        return
    assert isinstance(result, BookPath)
    assert result.kind in ("content", "asset")
    assert result.path == canonicalize(raw)


@given(st.one_of(st.text(), with_surrogates, path_like))
def test_content_and_asset_checks_raise_only_typed_path_errors(raw: str) -> None:
    for check, kind in ((content_path, "content"), (asset_path, "asset")):
        try:
            result = check(raw)
        except (InvalidPath, SchemaViolation):
            continue
        assert result == BookPath(classify(raw).path, kind)


@given(any_text)
@example("content/０１-Intro/０１-Basics/０１-hello.md")
def test_classified_paths_are_ascii(raw: str) -> None:
    """Both schemas are ASCII (`NN-Name`, asset names of letters, digits, `-_.`)."""
    try:
        result = classify(raw)
    except (InvalidPath, SchemaViolation):
        return
    assert result.path.isascii(), ascii(result.path)


@given(content_paths)
def test_schema_content_paths_are_accepted(path: str) -> None:
    assert classify(path) == BookPath(path, "content")


@given(asset_paths)
def test_schema_asset_paths_are_accepted(path: str) -> None:
    assert classify(path) == BookPath(path, "asset")


_ACCENTED = st.sampled_from([*"abcAZ09-_", "é", "è", "ñ", "ü", "Å", "ǖ", "ṩ", "한", "ô", "ç", "ῷ"])
accented_names = st.lists(_ACCENTED, min_size=1, max_size=40).map("".join)


@given(accented_names)
@example("café.md")
@example("ǖ" * 40)
def test_nfd_and_nfc_names_canonicalize_alike(name: str) -> None:
    nfc = unicodedata.normalize("NFC", name)
    nfd = unicodedata.normalize("NFD", name)
    assert _accepted(nfc) == _accepted(nfd)
    if _accepted(nfc) is not None:
        assert canonicalize(nfd) == canonicalize(nfc) == nfc


@given(st.lists(accented_names, min_size=1, max_size=12).map("/".join))
@example("/".join(["ǖ" * 25] * 10))  # 509 bytes in NFC, 759 code points in NFD
def test_nfd_and_nfc_paths_canonicalize_alike(path: str) -> None:
    """MAX_PATH_BYTES counts UTF-8 bytes after NFC normalisation, so both forms get one answer."""
    nfc = unicodedata.normalize("NFC", path)
    nfd = unicodedata.normalize("NFD", path)
    assert _accepted(nfc) == _accepted(nfd), (len(nfc.encode()), len(nfd))
