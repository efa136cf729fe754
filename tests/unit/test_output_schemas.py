"""Published output schemas: the same rules as pydantic's, said cheaper to check; several
shapes of one tool's result as one object."""

from __future__ import annotations

from typing import Any

import pytest
from fastmcp.utilities.json_schema import dereference_refs
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from panaversity_fs.app.middleware.schemas import lean_output
from panaversity_fs.builds.results import BuildPlan
from panaversity_fs.tools.results import merged_output_schema

HASH = "a" * 64
PLAN: dict[str, Any] = {
    "book_id": "b",
    "status": "changed",
    "manifest_hash": HASH,
    "files": [{"path": "p", "current_hash": HASH, "target_hash": None, "change_type": "added"}],
    "changed_count": 1,
    "total_files": 1,
}


def test_nullable_fields_become_type_lists_and_titles_go() -> None:
    schema = {
        "title": "Thing",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string"},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d"},
            "shaped": {"anyOf": [{"type": "string", "pattern": "^x$"}, {"type": "null"}]},
        },
        "required": ["title"],
    }
    assert lean_output(schema) == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "maybe": {"description": "d", "type": ["string", "null"]},
            "shaped": {"anyOf": [{"type": "string", "pattern": "^x$"}, {"type": "null"}]},
        },
        "required": ["title"],
    }


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"files": [{**PLAN["files"][0], "current_hash": None}]},
        {"files": [{**PLAN["files"][0], "current_hash": 5}]},
        {"files": [{**PLAN["files"][0], "change_type": "renamed"}]},
        {"files": [{"path": "p"}]},
        {"target_found": None},
        {"target_found": "yes"},
        {"status": None},
        {"changed_count": "1"},
    ],
)
def test_lean_schema_accepts_and_refuses_exactly_what_the_original_does(change: dict[str, Any]) -> None:
    original = dereference_refs(BuildPlan.model_json_schema())
    instance = {**PLAN, **change}
    verdicts = [
        not list(Draft202012Validator(schema).iter_errors(instance))
        for schema in (original, lean_output(original))
    ]
    assert verdicts[0] == verdicts[1], (change, verdicts)
    assert "anyOf" in str(original) and "anyOf" not in str(lean_output(original))


class _Page(BaseModel):
    """A page."""

    book_id: str
    files: list[str] = Field(description="the page's files")
    next_cursor: str | None = None


class _File(BaseModel):
    """A file."""

    book_id: str = Field(description="the book")
    file_hash: str
    user_id: str | None = None


def test_shapes_merge_into_one_object_that_each_result_follows() -> None:
    merged = merged_output_schema("a page or a file", _Page, _File)
    assert list(merged["properties"]) == ["book_id", "files", "next_cursor", "file_hash", "user_id"]
    assert merged["required"] == ["book_id"]  # the only field both require
    assert "description" not in merged["properties"]["book_id"]  # the first shape's word wins
    assert merged["properties"]["files"]["description"] == "the page's files"
    validator = Draft202012Validator(merged)
    results = [_Page(book_id="b", files=["x"]), _File(book_id="b", file_hash=HASH, user_id="u")]
    for result in results:
        assert not list(validator.iter_errors(result.model_dump(exclude_none=True)))
    assert list(validator.iter_errors({"book_id": "b", "file_hash": 5}))
    assert list(validator.iter_errors({"files": []}))


class _Clash(BaseModel):
    """The same name, another type."""

    book_id: int


def test_shapes_that_disagree_on_a_field_do_not_merge() -> None:
    with pytest.raises(ValueError, match=r"_Clash\.book_id"):
        merged_output_schema("never", _File, _Clash)
