"""The tool parameters several tools share, declared once."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

BookId = Annotated[str, Field(description="Book id, e.g. `python-book` (^[a-z0-9][a-z0-9-]{1,62}$).")]
OptionalBookId = Annotated[str | None, Field(description="Book id, e.g. `python-book`.")]
ContentPath = Annotated[
    str,
    Field(description="`content/{NN-Part}/{NN-Chapter}/{NN-lesson}(.summary)?.md`, relative to the book."),
]
AssetPath = Annotated[
    str, Field(description="`static/{asset_type}/{filename}`, e.g. `static/images/diagram-1.png`.")
]
UserId = Annotated[
    str | None,
    Field(description="Overlay owner: work on that user's personal copy instead of the shared book."),
]
Hash = Annotated[
    str | None,
    Field(description="The file's current `file_hash` (sha256, lowercase hex), from your last read."),
]
IdempotencyKey = Annotated[
    str | None,
    Field(
        description="Optional key (1-128 of `[A-Za-z0-9._:-]`, unique per change you intend): repeating "
        "a call that committed, with the same key and arguments, returns its result and changes "
        "nothing; the same key with other arguments is refused. Use it to retry safely after "
        "UNAVAILABLE or a lost connection."
    ),
]
Cursor = Annotated[
    str | None, Field(description="`next_cursor` of the previous page, with the same other arguments.")
]
Moment = Annotated[
    str | None,
    Field(
        description="ISO-8601 time with a timezone, e.g. `2026-03-01T12:00:00Z` (no zone: INVALID_ARGUMENT)."
    ),
]
