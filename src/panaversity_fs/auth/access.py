"""Access control: which scope each tool needs, and what a token's user and book limits allow.

One table, `TOOL_RULES`, names every tool, and the two operations that are not tools:
`read_resource` (a `book://` lesson read) and `complete` (completions). With auth on, a tool missing from it is refused
(fail closed), so a new tool cannot ship unprotected; a test checks the table against
`tools/list`.

- `fs:read` for the read tools, `fs:write` for mutations, `fs:admin` for audit and repair
  tools; `fs:admin` implies both others and `fs:write` implies `fs:read`.
- `plan_build` needs only `fs:read`: the manifest snapshot it stores is derived data (a cache
  of what the book already is), and build bots should not need the power to rewrite books.
- A `user_id` claim binds the token to that user's overlay: a `user_id` argument must equal
  it; mutations of shared (base) files are refused; reading base files is allowed. Tools whose
  results span every user's overlays (`validate_book`, admin tools) are refused.
- A `books` claim limits `book_id`. Calls that name no book (`list_books` without `book_id`,
  `all_books` searches, admin tools) are refused rather than filtered, so that no count,
  cursor or truncation can reveal another book; `complete_asset_upload` names no book but
  only completes an upload this agent declared through `upload_asset`, which was checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from panaversity_fs.errors import Forbidden
from panaversity_fs.identity import Caller

READ = "fs:read"
WRITE = "fs:write"
ADMIN = "fs:admin"

IMPLIED = {ADMIN: frozenset({ADMIN, WRITE, READ}), WRITE: frozenset({WRITE, READ}), READ: frozenset({READ})}
"""The scopes each granted scope stands for."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What one tool needs from a token."""

    scope: str
    base_mutation: bool = False
    """Changes shared (base) files unless a `user_id` argument names an overlay."""
    every_user: bool = False
    """Its result covers every user's overlays (refused to user-bound tokens)."""
    bookless: bool = False
    """May run without `book_id` under a `books` claim (the book was checked earlier)."""
    every_book: bool = False
    """Its result covers every book (refused to book-limited tokens)."""


TOOL_RULES: dict[str, Rule] = {
    "read_content": Rule(READ),
    "read_resource": Rule(READ),
    "complete": Rule(READ),
    "list_books": Rule(READ),
    "validate_book": Rule(READ, every_user=True),
    "glob_search": Rule(READ),
    "grep_search": Rule(READ),
    "get_book_archive": Rule(READ),
    "get_asset": Rule(READ),
    "list_assets": Rule(READ),
    "delta_build": Rule(READ),
    "plan_build": Rule(READ),
    "write_content": Rule(WRITE, base_mutation=True),
    "delete_content": Rule(WRITE, base_mutation=True),
    "upload_asset": Rule(WRITE, base_mutation=True),
    "complete_asset_upload": Rule(WRITE, base_mutation=True, bookless=True),
    "delete_asset": Rule(WRITE, base_mutation=True),
    "list_versions": Rule(READ),
    "diff_content": Rule(READ),
    "restore_version": Rule(WRITE, base_mutation=True),
    "revert_changes": Rule(ADMIN, every_user=True),
    "query_audit": Rule(ADMIN, every_user=True, every_book=True),
    "verify_audit": Rule(ADMIN, every_user=True, every_book=True),
}


def granted(scopes: frozenset[str]) -> frozenset[str]:
    """Every scope `scopes` amount to, implications included."""
    result: set[str] = set()
    for scope in scopes:
        result |= IMPLIED.get(scope, frozenset())
    return frozenset(result)


def offered(caller: Caller, tool: str) -> bool:
    """Whether `tools/list` shows `tool` to `caller`: false when every call would be refused.

    Arguments can still refuse a call that is offered (another user's overlay, another book).
    """
    if caller.scopes is None:
        return True
    rule = TOOL_RULES.get(tool)
    if rule is None or rule.scope not in granted(caller.scopes):
        return False
    if caller.user_id is not None and rule.every_user:
        return False
    return not (caller.books is not None and rule.every_book)


def authorize(caller: Caller, tool: str, arguments: Mapping[str, object]) -> None:
    """Refuse the call unless the caller's token allows `tool` with `arguments`.

    A caller without scopes (auth off) may call anything. Messages name the missing scope or
    limit and never echo another user's or book's data.

    Raises:
        Forbidden: the tool is unknown to the access table, the scope is missing, or the
            token's `user_id` or `books` claim does not allow these arguments.
    """
    if caller.scopes is None:
        return
    rule = TOOL_RULES.get(tool)
    if rule is None:
        raise Forbidden(f"tool {tool!r} has no access rule; it is refused", tool=tool)
    if rule.scope not in granted(caller.scopes):
        raise Forbidden(
            f"this token lacks the scope {rule.scope} that {tool} needs", required_scope=rule.scope
        )
    if caller.user_id is not None:
        _check_user(caller.user_id, tool, rule, arguments)
    if caller.books is not None:
        _check_books(caller.books, tool, rule, arguments)


def _check_user(bound: str, tool: str, rule: Rule, arguments: Mapping[str, object]) -> None:
    user_id = arguments.get("user_id")
    if rule.every_user:
        raise Forbidden(f"{tool} spans every user's files; this token is bound to one user", limit="user_id")
    if user_id is not None and user_id != bound:
        raise Forbidden(f"this token may only use user_id {bound!r}, its own overlay", limit="user_id")
    if rule.base_mutation and user_id is None:
        raise Forbidden(
            f"this token is bound to user {bound!r}: pass user_id {bound!r} to change its overlay "
            "(shared book files and assets cannot be changed)",
            limit="user_id",
        )


def _check_books(books: frozenset[str], tool: str, rule: Rule, arguments: Mapping[str, object]) -> None:
    book_id = arguments.get("book_id")
    # Anything but an absent or false `all_books` may be coerced to true by validation.
    if rule.every_book or arguments.get("all_books") not in (None, False):
        raise Forbidden(
            f"this token is limited to certain books; {tool} across all books is refused", limit="books"
        )
    if book_id is None:
        if rule.bookless:
            return
        raise Forbidden(f"this token is limited to certain books: pass book_id to {tool}", limit="books")
    if not isinstance(book_id, str) or book_id not in books:
        raise Forbidden("this token does not allow this book (books claim)", limit="books")
