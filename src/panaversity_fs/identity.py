"""Who is calling: the agent behind a request, its grants, and the rules an agent id follows.

With auth off the agent id is the client name the MCP client sent; with auth on it comes from
the verified bearer token (`agent_id` claim, else `sub`), together with the token's grants:
its scopes, its `user_id` claim and its `books` claim. Where the token or client name is read
from a request is the app's business (`app.identify`); this module only decides what they mean.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from panaversity_fs.errors import InvalidArgument, Unauthenticated
from panaversity_fs.paths import check_book_id, check_user_id, invisible_character, skeleton

MAX_AGENT_ID = 255
RESERVED_AGENT_IDS = frozenset({"system", "unknown", "anonymous"})
_RESERVED_SKELETONS = {skeleton(name): name for name in RESERVED_AGENT_IDS}


@dataclass(frozen=True, slots=True)
class Caller:
    """The agent behind one request, and what its token allows."""

    agent_id: str
    scopes: frozenset[str] | None = None
    """The token's scopes; None when auth is off (every tool allowed)."""
    user_id: str | None = None
    """The token's `user_id` claim: the one overlay this caller may use (None: any)."""
    books: frozenset[str] | None = None
    """The token's `books` claim: the books this caller may use (None: every book)."""


def check_agent_id(agent_id: object) -> str:
    """Return `agent_id` (NFC) if it can stand in the audit log as what a reader sees.

    The rules of visible text that paths follow apply: no control, bidi, zero-width, format or
    variation-selector characters; and no look-alike of a reserved id (`system`, `unknown`,
    `anonymous`), whatever its case, script or compatibility form.

    Raises:
        Unauthenticated: it is missing, empty, over-long, holds an invisible character, or
            is (or looks like) a reserved id.
    """
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise Unauthenticated("no agent identity: send a client name (clientInfo.name)")
    if len(agent_id) > MAX_AGENT_ID:
        raise Unauthenticated(f"agent id must be at most {MAX_AGENT_ID} characters")
    checked, refusal = _agent_id_verdict(agent_id)
    if refusal is not None:
        raise Unauthenticated(refusal)
    return checked


@lru_cache(maxsize=4096)
def _agent_id_verdict(agent_id: str) -> tuple[str, str | None]:
    """`agent_id` in NFC and why it is refused (None: it is not). Kept per id: every call of an
    agent checks the same id, and working out its look-alike skeleton each time cost 4.7 us."""
    hidden = invisible_character(agent_id)
    if hidden is not None:
        return (
            agent_id,
            f"agent id holds an invisible or control character (U+{ord(hidden):04X}); use visible text",
        )
    reserved = _RESERVED_SKELETONS.get(skeleton(agent_id.strip()))
    if reserved is not None:
        return agent_id, f"agent id looks like the reserved id {reserved!r}; identify your agent"
    return unicodedata.normalize("NFC", agent_id), None


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """Return the caller a verified token's claims describe.

    Raises:
        Unauthenticated: no usable agent id (`agent_id`, else `sub`), or a malformed `scope`,
            `scp`, `user_id` or `books` claim.
    """
    agent = claims.get("agent_id")
    agent_id = check_agent_id(claims.get("sub") if agent is None else agent)
    user_id: str | None = None
    books: frozenset[str] | None = None
    try:
        if claims.get("user_id") is not None:
            user_id = check_user_id(claims["user_id"])
        raw_books = claims.get("books")
        if raw_books is not None:
            if not isinstance(raw_books, list):
                raise Unauthenticated("the token's books claim must be a list of book ids")
            books = frozenset(check_book_id(book) for book in cast(list[object], raw_books))
    except InvalidArgument:
        raise Unauthenticated("the token's user_id or books claim is malformed") from None
    return Caller(agent_id, token_scopes(claims), user_id, books)


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes of a token: `scope` (space-separated) or `scp` (a list or a string).

    Raises:
        Unauthenticated: the claim is neither a string nor a list of strings.
    """
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(s, str) for s in cast(list[object], value)):
            return frozenset(cast(list[str], value))
        raise Unauthenticated(f"the token's {name} claim is malformed")
    return frozenset()
