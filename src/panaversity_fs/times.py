"""Times as the service stores and shows them: aware UTC datetimes, ISO-8601 with `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def epoch_micros(value: datetime) -> int:
    """Return `value` as integer microseconds since the Unix epoch."""
    delta = to_utc(value) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(value: datetime) -> str:
    """`value` in UTC as ISO-8601 text ending in `Z`."""
    return to_utc(value).isoformat().replace("+00:00", "Z")


def from_unix(seconds: float) -> str:
    """A unix time as ISO-8601 UTC text ending in `Z`."""
    return iso(datetime.fromtimestamp(seconds, UTC))
