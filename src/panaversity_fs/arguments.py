"""Checks of tool arguments that are neither paths nor ids (those are in `paths`): page
limits and times."""

from __future__ import annotations

from datetime import UTC, datetime

from panaversity_fs.errors import InvalidArgument

TIME_EXAMPLE = "2026-03-01T12:00:00Z"


def check_limit(limit: object, default: int, maximum: int, name: str = "limit") -> int:
    """Return `limit` (or `default` when None) if it is an integer in 1..`maximum`; `name` is
    the argument's name, for the message.

    Raises:
        InvalidArgument: it is not.
    """
    if limit is None:
        return default
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= maximum:
        raise InvalidArgument(f"{name} must be an integer from 1 to {maximum}", field=name, maximum=maximum)
    return limit


def check_time(name: str, value: object) -> datetime:
    """Return the ISO-8601 time `value`, which must name its timezone (`Z` or `+hh:mm`), in UTC.

    Raises:
        InvalidArgument: it is not a string, not ISO-8601, has no timezone, or falls outside
            the representable years once converted to UTC.
    """
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidArgument(f"{name} must be an ISO-8601 time", field=name, example=TIME_EXAMPLE)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{name} is not an ISO-8601 time", field=name, example=TIME_EXAMPLE) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(
            f"{name} must name its timezone (Z or +hh:mm)", field=name, example=TIME_EXAMPLE
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidArgument(
            f"{name} is outside the years 1-9999 once converted to UTC", field=name, example=TIME_EXAMPLE
        ) from None
