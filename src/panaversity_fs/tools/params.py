"""The tool parameters several tools share, declared once, with the rules their schemas state.

Patterns travel in the schema only (`json_schema_extra`): the services check every argument
themselves, with errors that name the rule broken and the next step, which a schema
validator's generic message would not.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

from panaversity_fs.paths import ASSET_TYPES

BOOK_ID = "^[a-z0-9-]{2,63}$"
USER_ID = r"^[\w-]{1,100}$"
SHA256 = "^[0-9a-f]{64}$"
KEY = r"^[\w.:-]{1,128}$"
LESSON = r"^content/\d\d-[^/]+/\d\d-[^/]+/\d\d-[^/]+\.md$"
"""Patterns state the shape of an argument for clients and models; the services check the exact
rules (an id cannot start with `-` or `_`, ...) and name the rule a value breaks."""


def text(pattern: str | None = None, description: str | None = None, **schema: object) -> object:
    """A string parameter's `Field`: its pattern, description and other schema keywords."""
    extra: dict[str, object] = dict(schema)
    if pattern is not None:
        extra["pattern"] = pattern
    return Field(description=description, json_schema_extra=extra or None)  # pyright: ignore[reportArgumentType]


BookId = Annotated[str, text(BOOK_ID)]
OptionalBookId = Annotated[str | None, text(BOOK_ID)]
LessonPath = Annotated[str, text(LESSON)]
AssetPath = Annotated[str, text("^static/(img|images|slides|videos|audio)/")]
UserId = Annotated[str | None, text(USER_ID)]
Hash = Annotated[str | None, text(SHA256)]
IdempotencyKey = str | None
"""1-128 of letters, digits, `.`, `_`, `:`, `-` (said once, in the server's instructions)."""
Cursor = str | None
Moment = Annotated[str | None, text(format="date-time")]
AssetType = Annotated[str, Field(json_schema_extra={"enum": list(ASSET_TYPES)})]
OptionalAssetType = Annotated[str | None, Field(json_schema_extra={"enum": list(ASSET_TYPES)})]


def page_size(maximum: int) -> object:
    """The range of a page-size parameter: 1 to `maximum` (stated; the services check it)."""
    return Field(json_schema_extra={"minimum": 1, "maximum": maximum})


Limit = Annotated[int | None, Strict()]
Count = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]
