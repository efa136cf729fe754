"""`TranslateErrors`: the one place where anything raised becomes the caller's JSON error.

Typed errors render as their JSON wire form; argument validation failures as
`INVALID_ARGUMENT`; anything else as `INTERNAL` (logged with its traceback, answered without
it). FastMCP wraps an exception that is not one of its own in a ToolError ("Error calling
tool ..."), keeping the original as its cause: it is translated by that cause.
"""

from __future__ import annotations

import logging

from fastmcp.exceptions import NotFoundError, ToolError, ValidationError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from mcp_types import CallToolRequestParams
from pydantic import ValidationError as PydanticValidationError

from panaversity_fs.errors import Internal, InvalidArgument, PanaversityFSError
from panaversity_fs.logs import current_request_id

logger = logging.getLogger("panaversity_fs.calls")

_WIRE_PREFIX = '{"error":"'


class TranslateErrors(Middleware):
    """Every tool call answers its result or the JSON error object, whatever was raised."""

    async def on_call_tool(
        self,
        context: MiddlewareContext[CallToolRequestParams],
        call_next: CallNext[CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        """Run the call; translate whatever it raises."""
        try:
            return await call_next(context)
        except ToolError as error:
            if str(error).startswith(_WIRE_PREFIX):
                raise
            cause = error.__cause__
            raise ToolError(wire_error(cause if cause is not None else error).to_json()) from None
        except NotFoundError:
            unknown = InvalidArgument(f"unknown tool {context.message.name!r}: tools/list names the tools")
            raise ToolError(unknown.to_json()) from None
        except Exception as error:
            raise ToolError(wire_error(error).to_json()) from None


def wire_error(error: BaseException) -> PanaversityFSError:
    """The caller's error for anything raised: typed errors as they are, validation failures as
    `INVALID_ARGUMENT`, anything else `INTERNAL` (logged with its traceback)."""
    if isinstance(error, PanaversityFSError):
        return error
    if isinstance(error, PydanticValidationError | ValidationError):
        return InvalidArgument(_validation_message(error))
    logger.error("call failed unexpectedly", exc_info=error)
    return Internal(f"internal error (request {current_request_id() or 'unknown'})")


def code_of(error: ToolError) -> str:
    """The error code of a translated tool error."""
    text = str(error)
    if text.startswith(_WIRE_PREFIX):
        return text[len(_WIRE_PREFIX) :].split('"', 1)[0]
    return Internal.code


def _validation_message(error: Exception) -> str:
    if not isinstance(error, PydanticValidationError) and isinstance(
        error.__cause__, PydanticValidationError
    ):
        error = error.__cause__
    if isinstance(error, PydanticValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors()[:5]
        ]
        return "invalid arguments: " + "; ".join(problems)
    return "invalid arguments"
