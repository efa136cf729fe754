"""Answer a request with one JSON body unless it has something to stream before its answer.

The MCP SDK's streamable HTTP transport (protocol 2025-11-25) answers every request of a server
as an event stream, or every one as JSON (and then drops progress). Streams cost more, and
clients cap one event (the official Python SDK at 1 MiB, below the lessons we accept); JSON
bodies have no such cap. So this transport waits for the first message a request produces:
its answer goes out as a plain JSON body; anything before it (progress, for a client that
asked with a `progressToken`) opens an event stream that carries it and then the answer, as
the protocol's newer transport does. `initialize` is left to the SDK.

`install()` makes the SDK's session manager build this transport (it names the class in its
module; there is no other hook).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from http import HTTPStatus
from typing import Any

import anyio
import mcp.server.streamable_http_manager as session_manager
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.server.streamable_http import (
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import INTERNAL_ERROR, JSONRPCError, JSONRPCRequest, JSONRPCResponse, jsonrpc_message_adapter
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

Events = MemoryObjectReceiveStream[EventMessage]


def install() -> None:
    """Make every streamable HTTP session answer with JSON whenever nothing precedes the answer."""
    session_manager.StreamableHTTPServerTransport = JsonRepliesTransport  # type: ignore[misc]


class JsonRepliesTransport(StreamableHTTPServerTransport):
    """The SDK transport, choosing JSON or an event stream per request, by what it produces."""

    async def _handle_post_request(
        self, scope: Scope, request: Request, receive: Receive, send: Send
    ) -> None:
        message = await self._request_to_answer(request)
        if message is None:
            await super()._handle_post_request(scope, request, receive, send)
            return
        writer = self._read_stream_writer
        assert writer is not None  # connect() runs before any request is handled
        if not await self._validate_request_headers(request, send):
            return
        request_id = str(message.id)
        self._request_streams[request_id] = anyio.create_memory_object_stream[EventMessage](
            REQUEST_STREAM_BUFFER_SIZE
        )
        events = self._request_streams[request_id][1]
        metadata = ServerMessageMetadata(
            request_context=request,
            on_request_unanswered=partial(self._terminate_unanswered_request, message.id),
            # The answer may go out as one JSON body: no request to the client can ride on it.
            can_send_request=False,
        )
        try:
            await writer.send(SessionMessage(message, metadata=metadata))
            first = await _next(events)
            if first is not None and not _answers(first, message) and not check_accept_headers(request)[1]:
                first = await _answer(events, message)  # nowhere to stream the rest to
            if first is None:
                response = self._create_error_response(
                    "Session terminated before the request completed",
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    INTERNAL_ERROR,
                )
            elif _answers(first, message):
                response = self._create_json_response(first.message)
            else:
                headers = {"Cache-Control": "no-cache, no-transform", "Content-Type": CONTENT_TYPE_SSE}
                if self.mcp_session_id:
                    headers[MCP_SESSION_ID_HEADER] = self.mcp_session_id
                response = EventSourceResponse(self._stream(first, events, message), headers=headers)
            await response(scope, receive, send)
        finally:
            await self._clean_up_memory_streams(request_id)

    async def _stream(
        self, first: EventMessage, events: Events, request: JSONRPCRequest
    ) -> AsyncIterator[Any]:
        """The request's messages as events, from `first` to its answer."""
        event: EventMessage | None = first
        while event is not None:
            yield self._create_event_data(event)
            if _answers(event, request):
                return
            event = await _next(events)

    async def _request_to_answer(self, request: Request) -> JSONRPCRequest | None:
        """The request this transport answers, or None to leave the POST to the SDK
        (notifications, responses, `initialize`, clients that accept no JSON, anything malformed)."""
        if self.is_json_response_enabled or not check_accept_headers(request)[0]:
            return None
        if not request.headers.get("content-type", "").lower().startswith("application/json"):
            return None
        try:
            raw = pydantic_core.from_json(await request.body())
            message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
        except ValueError:
            return None
        if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
            return None
        return message


def _answers(event: EventMessage, request: JSONRPCRequest) -> bool:
    answer = event.message
    return isinstance(answer, JSONRPCResponse | JSONRPCError) and answer.id == request.id


async def _next(events: Events) -> EventMessage | None:
    """The request's next message; None once its stream ended (the session closed)."""
    try:
        return await events.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return None


async def _answer(events: Events, request: JSONRPCRequest) -> EventMessage | None:
    """The request's answer, skipping what precedes it."""
    while (event := await _next(events)) is not None:
        if _answers(event, request):
            return event
        logger.debug("dropped a message the client cannot receive (it accepts no event stream)")
    return None
