"""`TranslateErrors`: the one place where anything raised becomes the caller's JSON error.

Typed errors render as their JSON wire form; argument validation failures as
`INVALID_ARGUMENT`; anything else as `INTERNAL` (logged with its traceback, answered without
it). FastMCP wraps an exception that is not one of its own in a ToolError ("Error calling
tool ..."), keeping the original as its cause: it is translated by that cause.
"""

from __future__ import annotations

import logging

from fastmcp.exceptions import NotFoundError, ResourceError, ToolError, ValidationError
from fastmcp.resources.base import ResourceResult
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolRequestParams, ReadResourceRequestParams
from pydantic import ValidationError as PydanticValidationError

from panaversity_fs.errors import (
    Internal,
    InvalidArgument,
    InvalidPath,
    NotFound,
    PanaversityFSError,
    SchemaViolation,
)
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

    async def on_read_resource(
        self,
        context: MiddlewareContext[ReadResourceRequestParams],
        call_next: CallNext[ReadResourceRequestParams, ResourceResult],
    ) -> ResourceResult:
        """Run the read; whatever it raises becomes a JSON-RPC error whose message is the JSON
        error object (also its `data`): resource reads have no error results."""
        try:
            return await call_next(context)
        except MCPError:
            raise
        except NotFoundError:
            error: PanaversityFSError = NotFound(
                "not a lesson URI: book://{book_id}/{path}, with ?user_id= for an overlay"
            )
        except ResourceError as raised:
            error = wire_error(raised.__cause__ if raised.__cause__ is not None else raised)
        except Exception as raised:
            error = wire_error(raised)
        code = (
            RESOURCE_NOT_FOUND if isinstance(error, NotFound) else _RPC_CODES.get(type(error), INTERNAL_ERROR)
        )
        raise MCPError(code, error.to_json(), error.to_dict()) from None


RESOURCE_NOT_FOUND = -32002
"""The JSON-RPC code MCP gives a resource that does not exist."""

_RPC_CODES: dict[type[PanaversityFSError], int] = {
    InvalidArgument: INVALID_PARAMS,
    InvalidPath: INVALID_PARAMS,
    SchemaViolation: INVALID_PARAMS,
}


def wire_error(error: BaseException) -> PanaversityFSError:
    """The caller's error for anything raised: typed errors as they are, validation failures as
    `INVALID_ARGUMENT`, anything else `INTERNAL` (logged with its traceback)."""
    if isinstance(error, PanaversityFSError):
        return error
    if isinstance(error, PydanticValidationError | ValidationError):
        return InvalidArgument(_validation_message(error))
    logger.error("call failed unexpectedly", exc_info=error)
    return Internal(f"internal error (request {current_request_id() or 'unknown'})")


def code_of(error: ToolError | MCPError) -> str:
    """The error code of a translated tool error or resource read error."""
    text = error.error.message if isinstance(error, MCPError) else str(error)
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
