"""`validate_book`: every schema violation of a book, each with a concrete fix.

Two sources are walked, because each can hold what the other lacks:

- the journal rows of the book, every user's (imported or legacy rows may break the schema;
  overlays are checked for a valid owner, content-only paths and an existing base lesson);
- the storage objects under `books/{book}/`: an object with no live journal row is invisible
  to every tool (a stray), whatever its name.

Internal objects (`.pfs/...`) lie outside `books/` and are never reported.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.books.results import Issue, Severity, ValidationReport, ValidationSummary
from panaversity_fs.books.suggest import free_number, numbered_name, suggest_path
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.errors import (
    InvalidPath,
    PanaversityFSError,
    SchemaViolation,
    Unavailable,
    unknown_book,
)
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, check_book_id, check_user_id, classify
from panaversity_fs.storage.blobs import BlobStore, StorageError

MAX_ISSUES = 1000
PROGRESS_EVERY = 250

Progress = Callable[[int, int], Awaitable[None]]

_NN = re.compile(r"([0-9]{2})-")


@dataclass
class _Findings:
    issues: list[Issue] = field(default_factory=list[Issue])
    errors: int = 0
    warnings: int = 0

    def add(self, path: str, severity: Severity, rule: str, message: str, suggestion: str | None) -> None:
        if severity == "error":
            self.errors += 1
        else:
            self.warnings += 1
        self.issues.append(
            Issue(path=path, severity=severity, rule=rule, message=message, suggestion=suggestion)
        )


class Validator:
    """Checks a book's journal rows and storage objects against the book schema."""

    def __init__(self, db: Database, store: BlobStore, trail: AuditTrail) -> None:
        self._db = db
        self._store = store
        self._trail = trail

    async def validate(
        self, op: Operation, book_id: object, strict: bool = False, progress: Progress | None = None
    ) -> ValidationReport:
        """Report every violation in `book_id`; `strict` makes warnings fail `valid` too.

        Raises:
            InvalidArgument: bad book id.
            NotFound: the book has neither journal rows nor storage objects.
            Unavailable: the database or storage failed; retry.
        """
        with self._trail.read(op, book_id, "book"):
            return await self._validate(check_book_id(book_id), bool(strict), progress)

    async def _validate(self, book: str, strict: bool, progress: Progress | None) -> ValidationReport:
        try:
            async with self._db.read() as conn:
                rows = [row for row in await journal.all_rows(conn, book) if row.exists]
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        prefix = f"books/{book}/"
        try:
            objects = await self._store.list(prefix)
        except StorageError:
            raise Unavailable("storage is unavailable; retry later") from None
        if not rows and not objects:
            raise unknown_book(book)
        total = len(rows) + len(objects)
        found = _Findings()
        base = {row.path: row for row in rows if row.user_id == BASE_USER}
        live = {_relative(row) for row in rows}
        numbers = _sibling_numbers(base)
        done = 0
        for row in rows:
            if row.user_id == BASE_USER:
                _check_base(row, base, numbers, found)
            else:
                _check_overlay(row, base, found)
            done += 1
            if progress is not None and done % PROGRESS_EVERY == 0:
                await progress(done, total)
        stray = 0
        for blob in objects:
            relative = blob.key[len(prefix) :]
            if relative not in live:
                stray += 1
                _check_stray(relative, numbers, found)
            done += 1
            if progress is not None and done % PROGRESS_EVERY == 0:
                await progress(done, total)
        _check_numbering(base, found)
        if progress is not None:
            await progress(total, total)
        found.issues.sort(key=lambda issue: (issue.path, issue.rule))
        valid = found.errors == 0 and (not strict or found.warnings == 0)
        return ValidationReport(
            book_id=book,
            valid=valid,
            strict=strict,
            summary=ValidationSummary(
                files=len(live) + stray,
                content_files=sum(1 for p in base if p.startswith("content/")),
                asset_files=sum(1 for p in base if p.startswith("static/")),
                overlay_files=len(rows) - len(base),
                stray_objects=stray,
                errors=found.errors,
                warnings=found.warnings,
            ),
            issues=found.issues[:MAX_ISSUES],
            truncated=len(found.issues) > MAX_ISSUES,
        )


def _relative(row: JournalRow) -> str:
    return row.path if row.user_id == BASE_USER else f"users/{row.user_id}/{row.path}"


def _schema_problem(path: str) -> tuple[str, str] | None:
    """`(rule, message)` of the first schema rule `path` breaks, or None if it is valid."""
    try:
        classify(path)
    except InvalidPath as error:
        return "unsafe_path", error.message
    except SchemaViolation as error:
        first = path.split("/", 1)[0]
        if first == "content" and not path.endswith(".md"):
            return "content_not_markdown", "content/ holds markdown (.md) files only; " + error.message
        if first == "content":
            return "content_schema", error.message
        if first == "static":
            return "asset_schema", error.message
        return "outside_content_static", "files must live under content/ or static/"
    return None


def _used(numbers: dict[str, set[str]], path: str) -> set[str]:
    return numbers.get(path.rsplit("/", 1)[0], set())


def _check_base(
    row: JournalRow, base: dict[str, JournalRow], numbers: dict[str, set[str]], found: _Findings
) -> None:
    problem = _schema_problem(row.path)
    if problem is not None:
        rule, message = problem
        found.add(
            row.path,
            "error",
            rule,
            f"journal row breaks the schema: {message}",
            suggest_path(row.path, _used(numbers, row.path)),
        )
        return
    if row.path.endswith(".summary.md"):
        lesson = row.path.removesuffix(".summary.md") + ".md"
        if lesson not in base:
            found.add(
                row.path,
                "warning",
                "summary_without_lesson",
                f"summary of {lesson}, which does not exist",
                f"create {lesson} or delete this summary",
            )


def _check_overlay(row: JournalRow, base: dict[str, JournalRow], found: _Findings) -> None:
    where = _relative(row)
    try:
        check_user_id(row.user_id)
    except PanaversityFSError:
        found.add(
            where,
            "error",
            "overlay_user_id",
            "overlay owner is not a valid user id (^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$, not __base__)",
            "delete this overlay; overlays belong to valid user ids only",
        )
        return
    problem = _schema_problem(row.path)
    if problem is not None or not row.path.startswith("content/"):
        rule, message = problem or ("overlay_not_content", "overlays hold lessons and summaries only")
        found.add(
            where,
            "error",
            rule,
            f"overlay breaks the schema: {message}",
            f"users/{row.user_id}/{suggest_path(row.path)}",
        )
        return
    if row.path not in base:
        found.add(
            where,
            "warning",
            "overlay_without_base",
            f"overlay of {row.path}, which does not exist in the base book",
            f"create the base file {row.path}, or delete this overlay",
        )


def _check_stray(relative: str, numbers: dict[str, set[str]], found: _Findings) -> None:
    invisible = "stored object has no journal row, so no tool can see it"
    segments = relative.split("/")
    if segments[0] == "users":
        user = segments[1] if len(segments) > 2 else ""
        inner = "/".join(segments[2:])
        try:
            check_user_id(user)
        except PanaversityFSError:
            found.add(
                relative,
                "error",
                "stray_object",
                f"{invisible}; '{user}' is not a valid user id",
                "delete it (overlays live at users/{user_id}/content/...)",
            )
            return
        problem = _schema_problem(inner) if inner else ("overlay_not_content", "no path after the user")
        if problem is None and inner.startswith("content/"):
            found.add(
                relative,
                "error",
                "stray_object",
                invisible,
                f"import it with write_content(path={inner!r}, user_id={user!r}) or delete it",
            )
        else:
            found.add(
                relative,
                "error",
                "stray_object",
                f"{invisible}; overlays hold lessons only",
                f"users/{user}/{suggest_path(inner)}",
            )
        return
    problem = _schema_problem(relative)
    if problem is None:
        found.add(
            relative,
            "error",
            "stray_object",
            invisible,
            "import it (panaversity-fs import, or write it through a tool) or delete it",
        )
        return
    rule, message = problem
    found.add(
        relative,
        "error",
        "stray_object",
        f"{invisible}; {message} ({rule})",
        suggest_path(relative, _used(numbers, relative)),
    )


def _sibling_numbers(base: dict[str, JournalRow]) -> dict[str, set[str]]:
    """The NN numbers in use in every content folder (for suggestions that do not collide)."""
    used: dict[str, set[str]] = defaultdict(set)
    for path in base:
        segments = path.split("/")
        for depth in range(1, len(segments)):
            match = _NN.match(segments[depth])
            if match is not None:
                used["/".join(segments[:depth])].add(match[1])
    return used


def _check_numbering(base: dict[str, JournalRow], found: _Findings) -> None:
    children: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in base:
        if _schema_problem(path) is not None or not path.startswith("content/"):
            continue
        segments = path.split("/")
        for depth in range(1, len(segments)):
            name = segments[depth]
            if depth == len(segments) - 1:
                name = name.removesuffix(".md").removesuffix(".summary")
            children["/".join(segments[:depth])][name[:2]].add(name)
    for folder, by_number in sorted(children.items()):
        for number, names in sorted(by_number.items()):
            if len(names) < 2:
                continue
            ordered = sorted(names)
            taken = set(by_number)
            found.add(
                f"{folder}/{number}-*",
                "warning",
                "duplicate_number",
                f"{len(ordered)} siblings share the number {number}: {', '.join(ordered)}",
                f"renumber {ordered[-1]} to {numbered_name(ordered[-1][3:], free_number(taken))}",
            )
