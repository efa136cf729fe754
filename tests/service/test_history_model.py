"""T-1 for history: the content tools plus `list_versions`, `read_content(version=)`,
`restore_version` and `revert_changes` against the in-memory model of `test_model.py`.

The model keeps every committed version of every (user, path) with its operation and bytes.
Hypothesis mixes writes, deletes and reads with restores of any version (or of one that does
not exist), reads of old versions, and version listings; at a random point it marks the start
of a window, and at the end the agent's changes since the mark are reverted (dry run, then
applied), which must put every file back as it was at the mark. Every answer is predicted
exactly; afterwards every path is read, fsck (version bytes included) must be clean, the audit
chain must verify, and the audit log must hold one entry per mutation in order.

Longer runs: `PFS_MODEL_EXAMPLES=200 uv run pytest tests/service/test_history_model.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastmcp import Client
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from panaversity_fs.app.server import create_server
from panaversity_fs.paths import BASE_USER
from tests.conftest import PAIRS, Backends
from tests.service.test_model import (
    AGENT,
    MUTATIONS,
    PATHS,
    USERS,
    Delete,
    HashKind,
    Model,
    Op,
    Outcome,
    Read,
    Write,
    _contents,
    _deletes,
    _hex64,
    _kinds,
    _picks,
    _reads,
    _users,
    check_audit,
    perform,
    predict,
    sha,
)
from tests.support import BOOK, ToolFailure, assert_invariants, call, client

HISTORY_MUTATIONS = (*MUTATIONS, "restore_version", "revert_changes")
_paths = st.sampled_from((0, 0, 1))


@dataclass(frozen=True)
class Restore:
    user: str | None
    path: int
    version_pick: int
    expected: HashKind
    pick: int
    random_hash: str


@dataclass(frozen=True)
class ReadVersion:
    user: str | None
    path: int
    version_pick: int


@dataclass(frozen=True)
class ListVersions:
    user: str | None
    path: int


@dataclass(frozen=True)
class Mark:
    """The revert window starts here (only the first mark counts)."""


HistoryOp = Op | Restore | ReadVersion | ListVersions | Mark

_writes = st.builds(
    Write, user=_users, path=_paths, content=_contents, expected=_kinds, pick=_picks, random_hash=_hex64
)
_restores = st.builds(
    Restore, user=_users, path=_paths, version_pick=_picks, expected=_kinds, pick=_picks, random_hash=_hex64
)
OPERATIONS: st.SearchStrategy[HistoryOp] = st.one_of(
    _writes,
    _writes,
    _deletes,
    _reads,
    _restores,
    _restores,
    st.builds(ReadVersion, user=_users, path=_paths, version_pick=_picks),
    st.builds(ListVersions, user=_users, path=_paths),
    st.just(Mark()),
)
SEQUENCES = st.lists(OPERATIONS, min_size=1, max_size=30)


@dataclass(frozen=True)
class Version:
    number: int
    file_hash: str | None
    operation: str
    content: str | None


class HistoryModel(Model):
    """The content model, plus every version of every (user, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[tuple[str | None, int], list[Version]] = {key: [] for key in self.slots}
        self.marked: dict[tuple[str | None, int], tuple[str | None, int]] | None = None

    def _record(self, user: str | None, path: int, change: str) -> None:
        slot = self.slots[(user, path)]
        kind = {"restore_version": "restore", "revert_changes": "revert"}.get(self.naming or "", change)
        self.versions[(user, path)].append(Version(slot.version, slot.file_hash, kind, slot.content))

    def write(self, op: Write, expected: str | None) -> Outcome:
        status, body = super().write(op, expected)
        if status == "ok":
            self._record(op.user, op.path, "create" if body["mode"] == "created" else "update")
        return status, body

    def delete(self, op: Delete, expected: str | None) -> Outcome:
        before = self.slots[(op.user, op.path)].version
        outcome = super().delete(op, expected)
        if self.slots[(op.user, op.path)].version != before:
            self._record(op.user, op.path, "delete")
        return outcome

    def number(self, op: Restore | ReadVersion) -> int:
        """The version number the caller asks for: one of the file's, or one past the newest."""
        known = [v.number for v in self.versions[(op.user, op.path)]]
        choices = [*known, (max(known) if known else 0) + 1]
        return choices[op.version_pick % len(choices)]

    def version(self, op: Restore | ReadVersion) -> Version | None:
        wanted = self.number(op)
        return next((v for v in self.versions[(op.user, op.path)] if v.number == wanted), None)

    def restore(self, op: Restore, expected: str | None) -> Outcome:
        self.naming = "restore_version"
        try:
            old = self.version(op)
            if old is None or old.content is None:
                return self._refuse(
                    Write(op.user, op.path, "", "none", 0, ""), "NOT_FOUND", None, path=PATHS[op.path]
                )
            return self.write(
                Write(op.user, op.path, old.content, op.expected, op.pick, op.random_hash), expected
            )
        finally:
            self.naming = None

    def read_version(self, op: ReadVersion) -> Outcome:
        old = self.version(op)
        if old is None or old.content is None:
            return "error", {"error": "NOT_FOUND", "path": PATHS[op.path]}
        return "ok", {
            "book_id": BOOK,
            "path": PATHS[op.path],
            "version": old.number,
            "file_hash": old.file_hash,
            "size": len(old.content.encode()),
            "source": "overlay" if op.user else "base",
            "user_id": op.user,
            "content": old.content,
        }

    def listing(self, op: ListVersions) -> Outcome:
        versions = self.versions[(op.user, op.path)]
        if not versions:
            return "error", {"error": "NOT_FOUND", "path": PATHS[op.path]}
        return "ok", {
            "book_id": BOOK,
            "path": PATHS[op.path],
            "user_id": op.user,
            "versions": [(v.number, v.file_hash, v.operation) for v in reversed(versions)],
        }

    def mark(self) -> bool:
        """Start the window now; False if it had started."""
        if self.marked is not None:
            return False
        self.marked = {key: (slot.file_hash, len(self.versions[key])) for key, slot in self.slots.items()}
        return True

    def revert(self, apply: bool) -> list[tuple[str, str, str, int | None]]:
        """(user, path, action, to_version) per file changed since the mark, in key order."""
        assert self.marked is not None
        planned: list[tuple[str, str, str, int | None]] = []
        keys = sorted(self.slots, key=lambda key: (key[0] or BASE_USER, PATHS[key[1]]))
        for user, path in keys:
            then, count = self.marked[(user, path)]
            versions = self.versions[(user, path)]
            if len(versions) == count:
                continue
            slot = self.slots[(user, path)]
            to = versions[count - 1].number if then is not None else None
            action = "unchanged" if slot.file_hash == then else ("restore" if then is not None else "delete")
            planned.append((user or BASE_USER, PATHS[path], action, to))
            if not apply or action == "unchanged":
                continue
            self.naming = "revert_changes"
            try:
                if then is None:
                    self.delete(Delete(user, path, "current", 0, ""), slot.file_hash)
                else:
                    content = versions[count - 1].content
                    assert content is not None
                    self._revert_write(user, path, content, slot.file_hash)
            finally:
                self.naming = None
        return planned

    def _revert_write(self, user: str | None, path: int, content: str, current: str | None) -> None:
        slot = self.slots[(user, path)]
        new = sha(content)
        slot.content, slot.file_hash, slot.version = content, new, slot.version + 1
        if user is not None:
            slot.base_at_write = self.slots[(None, path)].file_hash
        self.history[path].append(new)
        self._audit(Write(user, path, content, "none", 0, ""), current, new, None)
        self._record(user, path, "revert")


async def perform_history(c: Client[Any], model: HistoryModel, op: HistoryOp) -> tuple[Outcome, Outcome]:
    """(predicted, actual) outcome of one history operation."""
    args: dict[str, Any] = {"book_id": BOOK, "path": PATHS[op.path], "user_id": op.user}  # type: ignore[union-attr]
    if isinstance(op, Restore):
        expected = model.expected_hash(op)  # type: ignore[arg-type]
        number = model.number(op)
        status, fields = model.restore(op, expected)
        want: Outcome = status, {k: v for k, v in fields.items() if v is not None}
        return want, await _answer(
            c, "restore_version", args | {"version": number, "expected_hash": expected}
        )
    if isinstance(op, ReadVersion):
        number = model.number(op)
        status, fields = model.read_version(op)
        want = status, {k: v for k, v in fields.items() if v is not None}
        got = await _answer(c, "read_content", args | {"version": number})
        if got[0] == "ok":
            datetime.fromisoformat(got[1].pop("at"))
        return want, got
    assert isinstance(op, ListVersions)
    status, fields = model.listing(op)
    want = status, {k: v for k, v in fields.items() if v is not None}
    got = await _answer(c, "list_versions", args | {"limit": 200})
    if got[0] == "ok":
        listed = got[1]["versions"]
        assert all(v["available"] and v["agent_id"] == AGENT for v in listed), listed
        got[1]["versions"] = [(v["version"], v["file_hash"], v["operation"]) for v in listed]
    return want, got


async def _answer(c: Client[Any], tool: str, arguments: dict[str, Any]) -> Outcome:
    try:
        result = await call(c, tool, **arguments)
    except ToolFailure as failure:
        payload = dict(failure.payload)
        payload.pop("message")
        return "error", payload
    return "ok", {k: v for k, v in result.items() if v is not None}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("combo", PAIRS)
@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=int(os.environ.get("PFS_MODEL_EXAMPLES", "15")),
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(ops=SEQUENCES)
async def test_history_follows_the_model(backends: Backends, combo: str, ops: list[HistoryOp]) -> None:
    settings_ = await backends.settings(combo)
    model = HistoryModel()
    since: datetime | None = None
    async with client(create_server(settings_), agent=AGENT) as c:
        for step, op in enumerate(ops):
            if isinstance(op, Mark):
                if model.mark():
                    since = datetime.now(UTC)
                continue
            if isinstance(op, Write | Delete | Read):
                expected = model.expected_hash(op) if isinstance(op, Write | Delete) else None
                want = predict(model, op, expected)
                got = await perform(c, op, expected)
            else:
                want, got = await perform_history(c, model, op)
            note(f"step {step}: {op!r} -> {got!r}")
            assert got == want, f"step {step}: {op!r}"
        if since is not None:
            for apply in (False, True):
                planned = model.revert(apply)
                report = await call(c, "revert_changes", agent_id=AGENT, since=since.isoformat(), apply=apply)
                got_files = [
                    (f["user_id"] or BASE_USER, f["path"], f["action"], f["to_version"])
                    for f in report["files"]
                ]
                note(f"revert apply={apply} -> {report['files']!r}")
                assert got_files == planned and report["next_cursor"] is None
        for user in USERS:
            for path in range(len(PATHS)):
                op = Read(user, path)
                assert await perform(c, op, None) == predict(model, op, None), op
    await assert_invariants(settings_)
    await check_audit(settings_, model, HISTORY_MUTATIONS)
