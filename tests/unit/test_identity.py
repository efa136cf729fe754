"""Agent ids (`identity.check_agent_id`) and the visible-text rules under them (`paths`).

The verdict on an id is kept per id, and printable ASCII skips the per-character scan: these
tests pin that both give what the full rules give.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panaversity_fs.errors import Unauthenticated
from panaversity_fs.identity import MAX_AGENT_ID, check_agent_id
from panaversity_fs.paths import describe_rejected_path, invisible_character


@pytest.mark.parametrize("agent_id", ["bench-agent", "lesson-writer-7", "Agent Smith", "écrivain"])
def test_visible_agent_ids_are_accepted(agent_id: str) -> None:
    assert check_agent_id(agent_id) == agent_id


def test_an_nfd_agent_id_comes_back_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "écrivain")
    assert check_agent_id(decomposed) == "écrivain"
    assert check_agent_id(decomposed) == "écrivain"  # the kept verdict gives the same


@pytest.mark.parametrize(
    ("agent_id", "says"),
    [
        ("system", "reserved id 'system'"),
        ("SYSTEM", "reserved id 'system'"),
        ("s\u0443stem", "reserved id 'system'"),  # Cyrillic у
        ("ｕｎｋｎｏｗｎ", "reserved id 'unknown'"),  # fullwidth
        ("agent\u200b", "U+200B"),
        ("agent\x07", "U+0007"),
        ("agent\x7f", "U+007F"),
        ("", "no agent identity"),
        ("   ", "no agent identity"),
        ("a" * (MAX_AGENT_ID + 1), "at most"),
    ],
)
def test_refused_agent_ids_are_refused_every_time(agent_id: str, says: str) -> None:
    for _ in range(2):  # the second answer comes from the kept verdict
        with pytest.raises(Unauthenticated, match=re.escape(says)):
            check_agent_id(agent_id)


def test_a_non_string_agent_id_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        check_agent_id(None)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_in_ascii_the_invisible_characters_are_the_unprintable_ones(text: str) -> None:
    assert invisible_character(text) == next((char for char in text if not char.isprintable()), None)


@given(st.text(alphabet=st.characters(max_codepoint=127)), st.text())
def test_a_printable_ascii_prefix_does_not_hide_what_follows(prefix: str, rest: str) -> None:
    printable = "".join(char for char in prefix if char.isprintable())
    assert invisible_character(printable + rest) == invisible_character(rest)


@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=127))), st.integers(4, 300))
def test_rejected_paths_are_described_as_unicode_escape_gives_them(raw: str, limit: int) -> None:
    escaped = raw.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    expected = escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."
    assert describe_rejected_path(raw, limit) == expected
