"""Published output schemas: the same rules as pydantic's, said cheaper to check."""

from __future__ import annotations

from typing import Any

import pytest
from fastmcp.utilities.json_schema import dereference_refs
from jsonschema import Draft202012Validator

from panaversity_fs.app.middleware.schemas import lean_output
from panaversity_fs.builds.results import BuildPlan

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
