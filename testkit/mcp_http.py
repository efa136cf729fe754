"""Raw MCP over streamable HTTP, for measuring and classifying exactly what goes on the wire:
one parser of answers (a JSON body or a server-sent-event stream) and a session that keeps
each answer's bytes. Tests and programs that only need results use fastmcp's `Client`."""

from __future__ import annotations

import json
from typing import Any

import httpx

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
PROTOCOL = "2025-11-25"


def jsonrpc_messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a POST answer: a JSON body, or the `message` events of an SSE stream.

    Raises:
        ValueError: the body is neither (or its JSON is malformed).
    """
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        data = json.loads(response.content)
        return data if isinstance(data, list) else [data]
    if not content_type.startswith("text/event-stream"):
        raise ValueError(f"unexpected content type {content_type!r}")
    # Splitting bytes on one separator runs in C; a regex split over a 100 KB answer cost
    # more client CPU than parsing its JSON. Lines end in \r\n, \n or a lone \r.
    lines: list[bytes] = []
    for line in response.content.split(b"\n"):
        line = line.removesuffix(b"\r")
        lines.extend(line.split(b"\r") if b"\r" in line else (line,))
    messages: list[dict[str, Any]] = []
    event, data_lines = b"message", []
    for line in [*lines, b""]:
        if not line:
            payload = b"\n".join(data_lines)
            if event == b"message" and payload:  # priming events carry an empty data line
                messages.append(json.loads(payload))
            event, data_lines = b"message", []
        elif not line.startswith(b":"):
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value
            elif name == b"data":
                data_lines.append(value)
    return messages


def answer_to(response: httpx.Response, request_id: int) -> dict[str, Any] | None:
    """The JSON-RPC message answering `request_id` in `response`, or None (also when the body
    is not JSON-RPC at all)."""
    try:
        messages = jsonrpc_messages(response)
    except ValueError:
        return None
    return next((m for m in messages if isinstance(m, dict) and m.get("id") == request_id), None)


class RawSession:
    """One MCP session over plain HTTP; answers are returned as received."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, bearer: str | None = None, name: str = "raw"
    ) -> None:
        self._http = http
        self._url = url
        self._name = name
        self._headers = dict(HEADERS) | ({"Authorization": f"Bearer {bearer}"} if bearer else {})
        self._next = 0

    async def open(self) -> None:
        """`initialize`, then `notifications/initialized`; later requests carry the session id.

        Raises:
            httpx.HTTPStatusError: the server refused.
        """
        params = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": self._name, "version": "1"},
        }
        answer = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        self._headers |= {
            "mcp-session-id": answer.headers["mcp-session-id"],
            "mcp-protocol-version": PROTOCOL,
        }
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def rpc(self, method: str, params: dict[str, Any]) -> tuple[httpx.Response, dict[str, Any]]:
        """The answer as received, and the JSON-RPC message answering this request.

        Raises:
            RuntimeError: the request failed (a JSON-RPC error or a tool error).
        """
        self._next += 1
        answer = await self.post({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params})
        message = answer_to(answer, self._next)
        if message is None or "error" in message or message["result"].get("isError"):
            raise RuntimeError(f"{method} failed: {answer.text[:300]}")
        return answer, message

    async def tool(self, name: str, **arguments: Any) -> tuple[int, dict[str, Any]]:
        """Call tool `name`: the bytes of its answer's body, and its result."""
        answer, message = await self.rpc("tools/call", {"name": name, "arguments": arguments})
        return len(answer.content), message["result"]

    async def post(self, body: dict[str, Any]) -> httpx.Response:
        """POST one JSON-RPC message.

        Raises:
            httpx.HTTPStatusError: the server answered with an error status.
        """
        answer = await self._http.post(self._url, json=body, headers=self._headers)
        answer.raise_for_status()
        return answer
