"""T-1: a model-based test of the content tools against an in-memory model of the write contract.

Hypothesis generates sequences of `write_content` / `read_content` / `delete_content` calls over
three paths of one book, on the base and on the overlays of users `u1` and `u2`. Each write's
`expected_hash` is the hash the caller would currently read (none if there is nothing to read;
for an overlay not yet written that is the base hash, i.e. a fork), a stale hash (any hash that
path has had, in any namespace, other users' overlays included), none, or a random sha256; a
delete's is the namespace's own hash, stale, none or random. Before every call the model
predicts the exact outcome: the whole structured result (mode, file_hash, size, version,
previous_hash, source, ...) or the error code with its details (`current_hash`, `path`). Each
example runs on a fresh server over fresh backends; after it, every path is read as base/u1/u2,
fsck must be clean, the audit chain must verify, and the audit log must hold exactly one entry per
mutation call (refused ones included) with the per-file `new_hash -> prev_hash` chain intact.

The model follows the documented contract (specs/contract.md, `ContentService` docstrings):

* write without hash: created if the namespace's file is missing, else HASH_REQUIRED(current_hash);
* write with hash: updated if it is the file's current hash, else CONFLICT(current_hash); for a
  missing file NOT_FOUND, except for an overlay whose base exists: the base hash forks the
  overlay (created), any other hash is CONFLICT(current_hash = base hash);
* delete is idempotent (`existed: false` when missing); a hash that mismatches a live file is
  CONFLICT(current_hash); an overlay delete never touches base;
* a read with `user_id` returns the live overlay, else the base (`source` says which).

Longer runs: `PFS_MODEL_EXAMPLES=500 uv run pytest tests/service/test_model.py`; outcome coverage:
add `--hypothesis-show-statistics`. A failure prints the shrunk operation list, every step's
actual result, and a `@reproduce_failure` blob through Hypothesis's normal output
(`--hypothesis-seed=N` replays a whole run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pytest
from fastmcp import Client
from hypothesis import HealthCheck, Phase, event, given, note, settings, target
from hypothesis import strategies as st

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql
from panaversity_fs.db.engine import Database
from panaversity_fs.paths import BASE_USER
from tests.conftest import PAIRS, Backends
from tests.support import BOOK, ToolFailure, assert_invariants, call, client

PATHS = (
    "content/01-Intro/01-Basics/01-hello.md",
    "content/01-Intro/01-Basics/01-hello.summary.md",
    "content/01-Intro/02-Next/01-more.md",
)
USERS: tuple[str | None, ...] = (None, "u1", "u2")
AGENT = "model-checker-1"
MUTATIONS = ("write_content", "delete_content")
AUDIT_FIELDS = ("operation", "book_id", "path", "user_id", "prev_hash", "new_hash", "status", "error_code")

HashKind = Literal["current", "stale", "none", "random"]
Outcome = tuple[Literal["ok", "error"], dict[str, Any]]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- operations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    user: str | None
    path: int
    content: str
    expected: HashKind
    pick: int
    random_hash: str


@dataclass(frozen=True)
class Read:
    user: str | None
    path: int


@dataclass(frozen=True)
class Delete:
    user: str | None
    path: int
    expected: HashKind
    pick: int
    random_hash: str


Op = Write | Read | Delete

# Skewed towards the base and the first path so that operations interact (forks need a live
# base, stale hashes need history); sampled_from shrinks towards the first element.
_users = st.sampled_from((None, None, "u1", "u1", "u2"))
_paths = st.sampled_from((0, 0, 0, 1, 2))
_kinds: st.SearchStrategy[HashKind] = st.sampled_from(("current", "current", "stale", "none", "random"))
_picks = st.integers(0, 63)
_hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
# A few fixed contents make hash collisions (same bytes written twice, stale == current) likely.
_contents = st.one_of(
    st.sampled_from(("v1", "v2", "", "# Title\n\nbody\n", "café ☕\r\n")),
    st.text(max_size=40),
)
_writes = st.builds(
    Write,
    user=_users,
    path=_paths,
    content=_contents,
    expected=_kinds,
    pick=_picks,
    random_hash=_hex64,
)
_reads = st.builds(Read, user=_users, path=_paths)
_deletes = st.builds(Delete, user=_users, path=_paths, expected=_kinds, pick=_picks, random_hash=_hex64)
OPERATIONS: st.SearchStrategy[Op] = st.one_of(_writes, _writes, _reads, _deletes)
MAX_STEPS = 40


def _flatten(chunks: list[list[Op]]) -> list[Op]:
    return [op for chunk in chunks for op in chunk][:MAX_STEPS]


# A list of short lists: about 25 operations on average (a flat `st.lists(..., max_size=40)`
# averages about six, too few for operations to meet), and the shrinker can still delete any
# operation or run of operations, down to a single one.
SEQUENCES: st.SearchStrategy[list[Op]] = st.lists(
    st.lists(OPERATIONS, min_size=1, max_size=10), min_size=1, max_size=8
).map(_flatten)


# -- the model ----------------------------------------------------------------------------


@dataclass
class Slot:
    """One namespace's file at one path: live content and hash, and its committed changes."""

    content: str | None = None
    file_hash: str | None = None
    version: int = 0
    base_at_write: str | None = None
    """An overlay's: the base hash when the overlay was last written (overlay reads report a move)."""

    @property
    def live(self) -> bool:
        return self.file_hash is not None


class Model:
    """What the server must hold and answer, per (user, path)."""

    def __init__(self) -> None:
        self.slots = {(user, path): Slot() for user in USERS for path in range(len(PATHS))}
        self.history: dict[int, list[str]] = {path: [] for path in range(len(PATHS))}
        self.audit: list[dict[str, Any]] = []
        self.naming: str | None = None
        """The tool a write or delete is made by, when not write_content / delete_content."""

    def resolved(self, user: str | None, path: int) -> Slot | None:
        if user is not None and self.slots[(user, path)].live:
            return self.slots[(user, path)]
        base = self.slots[(None, path)]
        return base if base.live else None

    def expected_hash(self, op: Write | Delete) -> str | None:
        """The `expected_hash` the caller sends for `op`, given the current state."""
        if op.expected == "none":
            return None
        if op.expected == "random":
            return op.random_hash
        if op.expected == "stale":
            seen = self.history[op.path]
            return seen[op.pick % len(seen)] if seen else op.random_hash
        own = self.slots[(op.user, op.path)]
        if isinstance(op, Delete) and own.live:
            return own.file_hash
        current = self.resolved(op.user, op.path)
        return current.file_hash if current is not None else None  # nothing read: create

    def _audit(self, op: Write | Delete, prev: str | None, new: str | None, code: str | None) -> None:
        self.audit.append(
            {
                "operation": self.naming or ("write_content" if isinstance(op, Write) else "delete_content"),
                "book_id": BOOK,
                "path": PATHS[op.path],
                "user_id": op.user or BASE_USER,
                "prev_hash": prev,
                "new_hash": new,
                "status": "success" if code is None else "refused",
                "error_code": code,
            }
        )

    def _refuse(self, op: Write | Delete, code: str, own: str | None, **details: Any) -> Outcome:
        # A refusal changes nothing, so its audit entry records the namespace's unchanged hash.
        self._audit(op, own, own, code)
        return "error", {"error": code, **details}

    def write(self, op: Write, expected: str | None) -> Outcome:
        slot = self.slots[(op.user, op.path)]
        if expected is None:
            if slot.live:
                return self._refuse(op, "HASH_REQUIRED", slot.file_hash, current_hash=slot.file_hash)
            return self._commit_write(op, "created", None)
        if slot.live:
            if expected == slot.file_hash:
                return self._commit_write(op, "updated", expected)
            return self._refuse(op, "CONFLICT", slot.file_hash, current_hash=slot.file_hash)
        if op.user is not None:
            base = self.slots[(None, op.path)]
            if base.live:
                if expected == base.file_hash:
                    return self._commit_write(op, "created", None)  # fork from the base read
                return self._refuse(op, "CONFLICT", None, current_hash=base.file_hash)
        return self._refuse(op, "NOT_FOUND", None, path=PATHS[op.path])

    def _commit_write(self, op: Write, mode: str, previous: str | None) -> Outcome:
        slot = self.slots[(op.user, op.path)]
        new = sha(op.content)
        slot.content, slot.file_hash, slot.version = op.content, new, slot.version + 1
        if op.user is not None:
            slot.base_at_write = self.slots[(None, op.path)].file_hash
        self.history[op.path].append(new)
        self._audit(op, previous, new, None)
        source = "overlay" if op.user else "base"
        return "ok", {
            "book_id": BOOK,
            "path": PATHS[op.path],
            "mode": mode,
            "file_hash": new,
            "size": len(op.content.encode()),
            "version": slot.version,
            "previous_hash": previous,
            "user_id": op.user,
            "source": source,
        }

    def delete(self, op: Delete, expected: str | None) -> Outcome:
        slot = self.slots[(op.user, op.path)]
        previous = slot.file_hash
        if slot.live and expected is not None and expected != slot.file_hash:
            return self._refuse(op, "CONFLICT", previous, current_hash=previous)
        if slot.live:
            slot.content, slot.file_hash, slot.version = None, None, slot.version + 1
        self._audit(op, previous, None, None)
        source = "overlay" if op.user else "base"
        return "ok", {
            "book_id": BOOK,
            "path": PATHS[op.path],
            "existed": previous is not None,
            "previous_hash": previous,
            "user_id": op.user,
            "source": source,
        }

    def read(self, op: Read) -> Outcome:
        current = self.resolved(op.user, op.path)
        if current is None:
            return "error", {"error": "NOT_FOUND", "path": PATHS[op.path]}
        assert current.content is not None and current.file_hash is not None
        base = self.slots[(None, op.path)]
        source = "overlay" if current is not base else "base"
        overlay = {"base_hash": base.file_hash, "base_changed": base.file_hash != current.base_at_write}
        return "ok", {
            "book_id": BOOK,
            "path": PATHS[op.path],
            "content": current.content,
            "file_hash": current.file_hash,
            "size": len(current.content.encode()),
            "version": current.version,
            "user_id": op.user,
            "source": source,
            **(overlay if source == "overlay" else {}),
        }


# -- running operations against the server ------------------------------------------------


async def perform(c: Client[Any], op: Op, expected: str | None) -> Outcome:
    """Call the tool for `op`; return its result, or its error without the free-text message."""
    args: dict[str, Any] = {"book_id": BOOK, "path": PATHS[op.path], "user_id": op.user}
    if isinstance(op, Write):
        tool = "write_content"
        args.update(content=op.content, expected_hash=expected)
    elif isinstance(op, Delete):
        tool = "delete_content"
        args.update(expected_hash=expected)
    else:
        tool = "read_content"
    try:
        result = await call(c, tool, **args)
    except ToolFailure as failure:
        payload = dict(failure.payload)
        message = payload.pop("message")
        assert isinstance(message, str) and message, failure.payload
        # S-4/S-10: no traceback, and nothing about another user, in any error.
        text = json.dumps(failure.payload)
        assert "Traceback" not in text, text
        others = [u for u in USERS if u is not None and u != op.user]
        assert not any(re.search(rf"\b{u}\b", text) for u in others), text
        return "error", payload
    if tool == "read_content":
        datetime.fromisoformat(result.pop("last_modified"))
    return "ok", result


def outcome_label(op: Op, expected: str | None, outcome: Outcome) -> str:
    """A coarse name of an outcome, for `--hypothesis-show-statistics`."""
    kind, body = outcome
    namespace = "overlay" if op.user else "base"
    if kind == "error":
        return f"{type(op).__name__.lower()} {namespace}: {body['error']}"
    if isinstance(op, Delete):
        return f"delete {namespace}: {'existed' if body['existed'] else 'missing'}"
    detail = body.get("mode") or body["source"]
    if isinstance(op, Write) and op.user and detail == "created" and expected is not None:
        detail = "created (fork from base)"
    return f"{type(op).__name__.lower()} {namespace}: {detail}"


def predict(model: Model, op: Op, expected: str | None) -> Outcome:
    """The model's outcome, as the wire carries it: null fields left out."""
    if isinstance(op, Write):
        status, fields = model.write(op, expected)
    elif isinstance(op, Delete):
        status, fields = model.delete(op, expected)
    else:
        status, fields = model.read(op)
    return status, {key: value for key, value in fields.items() if value is not None}


async def check_audit(settings_: Settings, model: Model, mutations: tuple[str, ...] = MUTATIONS) -> None:
    """One audit entry per mutation call, in order, by the real agent; per-file chains link."""
    db = Database.from_settings(settings_)
    try:
        async with db.read() as conn:
            entries = [e async for e in audit_sql.stream_entries(conn) if e["operation"] in mutations]
    finally:
        await db.dispose()
    assert {e["agent_id"] for e in entries} <= {AGENT}, {e["agent_id"] for e in entries}
    got = [{key: entry[key] for key in AUDIT_FIELDS} for entry in entries]
    assert got == model.audit
    last: dict[tuple[str, str], str | None] = {}
    for entry in entries:
        key = (entry["path"], entry["user_id"])
        if entry["status"] != "success" and entry["prev_hash"] is None and entry["new_hash"] is None:
            continue  # refused before the file was read (e.g. no such version): it records no hash
        assert last.get(key) == entry["prev_hash"], (key, entry)
        last[key] = entry["new_hash"]


# Passing takes well under a minute per backend; a failure's shrinking may take minutes more.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combo", PAIRS)
@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=int(os.environ.get("PFS_MODEL_EXAMPLES", "25")),
    print_blob=True,
    # The explain phase traces every line of the server (minutes per failure); shrinking alone
    # already yields the minimal sequence.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(ops=SEQUENCES)
async def test_content_tools_follow_the_model(backends: Backends, combo: str, ops: list[Op]) -> None:
    settings_ = await backends.settings(combo)
    model = Model()
    seen: set[str] = set()
    final_reads = [Read(user, path) for path in range(len(PATHS)) for user in USERS]
    async with client(create_server(settings_), agent=AGENT) as c:
        for step, op in enumerate([*ops, *final_reads]):
            expected = model.expected_hash(op) if isinstance(op, Write | Delete) else None
            want = predict(model, op, expected)
            got = await perform(c, op, expected)
            phase = "step" if step < len(ops) else "final read"
            note(f"{phase} {step}: {op!r} expected_hash={expected!r} -> {got!r}")
            assert got == want, f"{phase} {step}: {op!r} expected_hash={expected!r}"
            seen.add(outcome_label(op, expected, got))
    event(f"steps: {len(ops) // 10 * 10:02d}+")
    for label in sorted(seen):
        event(label)
    # Steer generation towards sequences that reach many different outcomes (forks, conflicts...).
    target(float(len(seen)), label="distinct outcomes")
    await assert_invariants(settings_)
    await check_audit(settings_, model)
