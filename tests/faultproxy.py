"""Fault-injecting proxies for the wire-fault tests (specs/test-catalogue.md T-5, T-6).

No toxiproxy can run here (E12), so these are our own, small and asyncio-based, in front of the
real servers:

- `PostgresProxy`: a TCP relay in front of PostgreSQL. Modes: pass, latency, reset (every
  connection, now and while the mode lasts), reset after N more client bytes (a transaction cut
  midway), cut the connection that sends COMMIT (it frames the client's protocol messages to find
  a simple `Query` or an extended `Parse` of COMMIT, or the `Sync` that commits the server's
  one-statement commit of an update), and hang (nothing forwarded, sockets open).
- `S3Proxy`: an HTTP/1.1 proxy in front of an S3 server. Each request may draw a fault by method
  from a seeded random: 503 SlowDown, 500 InternalError, a body cut short (the full
  Content-Length, part of the body, then EOF), a reset midway through an upload, or the request
  applied upstream and its answer lost. Every request is logged with the fault it got.

Each proxy runs its own event loop on its own thread, so it keeps relaying while the test
blocks (starting a server process, running the CLI); its methods may be called from any thread.
A reset closes the socket with `SO_LINGER` 0, so the peer sees RST rather than a clean FIN.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
COMMIT_STATEMENTS = frozenset({"COMMIT", "END", "COMMIT WORK", "COMMIT TRANSACTION", "END TRANSACTION"})


_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="_Threaded")


class _Threaded:
    """Owns an event loop running on a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, _R]) -> _R:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _stop(self) -> None:
        self._run(_cancel_the_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def on_loop(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run `method` on its proxy's loop, whichever thread calls it."""

    @functools.wraps(method)
    def wrapper(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if threading.current_thread() is self._thread:
            return method(self, *args, **kwargs)
        done: concurrent.futures.Future[_R] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(method(self, *args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(10)

    return wrapper


def hard_close(writer: asyncio.StreamWriter) -> None:
    """Close `writer`'s socket at once, with a TCP reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def is_commit(sql: str) -> bool:
    """Whether `sql` is a statement that commits the current transaction."""
    return " ".join(sql.strip().rstrip(";").upper().split()) in COMMIT_STATEMENTS


def commits_alone(sql: str | None) -> bool:
    """Whether `sql` is the server's one-statement commit of an update (`db/commit_sql.py`): sent
    outside a transaction, it commits at the `Sync` that follows its `Execute`."""
    return sql is not None and sql.startswith("WITH cas AS")


# -- PostgreSQL ------------------------------------------------------------------------------

PgMode = Literal["pass", "latency", "reset", "reset_after", "commit", "hang"]


class _PgLink:
    """One client connection and its upstream connection."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.budget: int | None = None
        """Client bytes still forwarded before the link is reset (None: no limit)."""
        self.cut = False
        """Set once the link is being cut: nothing more reaches the client."""
        self.startup = True
        self.prepared: dict[bytes, str] = {}
        """The SQL of each statement the client prepared (Parse), by name."""
        self.commit_at_sync = False
        """A one-statement commit was bound: the next Sync commits it."""
        self.opaque = False
        """TLS was negotiated: the messages can no longer be read."""
        self.pending = bytearray()

    def reset(self) -> None:
        self.cut = True
        hard_close(self.client_writer)
        hard_close(self.server_writer)

    def messages(self, data: bytes) -> list[tuple[bytes, str | None]]:
        """Frame the client's bytes into whole messages: (bytes, SQL text of a Query/Parse)."""
        if self.opaque:
            return [(data, None)]
        self.pending += data
        out: list[tuple[bytes, str | None]] = []
        while True:
            if self.startup:
                if len(self.pending) < 8:
                    break
                length, code = struct.unpack("!II", self.pending[:8])
                if len(self.pending) < length:
                    break
                message = bytes(self.pending[:length])
                del self.pending[:length]
                out.append((message, None))
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    self.startup = False
                continue
            if len(self.pending) < 5:
                break
            kind = self.pending[0:1]
            (length,) = struct.unpack("!I", self.pending[1:5])
            if len(self.pending) < length + 1:
                break
            message = bytes(self.pending[: length + 1])
            del self.pending[: length + 1]
            out.append((message, _sql_of(kind, message[5:])))
        return out


def _land(link: _PgLink, message: bytes) -> None:
    """Hand a cut link's last message to the server, then hang up on it a second later."""
    link.server_writer.write(message)
    asyncio.get_running_loop().call_later(1.0, link.server_writer.close)


def _sql_of(kind: bytes, payload: bytes) -> str | None:
    if kind == b"Q":
        return payload.split(b"\0", 1)[0].decode(errors="replace")
    if kind == b"P":
        parts = payload.split(b"\0", 2)
        return parts[1].decode(errors="replace") if len(parts) > 1 else None
    return None


@dataclass
class PgStats:
    """What the PostgreSQL proxy saw and did."""

    connections: int = 0
    resets: int = 0
    round_trips: int = 0
    """Simple queries and extended-protocol Syncs: each waits for the server's answer."""
    commits_seen: int = 0
    commits_cut: int = 0


class PostgresProxy(_Threaded):
    """A TCP proxy in front of PostgreSQL with switchable faults (`pass` to begin with)."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432, seed: int = 0) -> None:
        super().__init__()
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_PgLink] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._random = random.Random(seed)
        self.mode: PgMode = "pass"
        self._latency = (0.0, 0.0)
        self._reset_bytes = (0, 0)
        self._commit_cuts_left = 0
        self._commit_delivered = True
        self._commit_delay = 0.0
        self.port = 0
        self.stats = PgStats()

    def start(self) -> PostgresProxy:
        """Listen on a free loopback port."""
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def url(self, database_url: str) -> str:
        """`database_url` pointed at this proxy (plain TCP: the proxy reads the protocol)."""
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        query = "&".join(q for q in [parts.query, "sslmode=disable"] if q)
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, query=query)
        )

    def close(self) -> None:
        """Stop listening, drop every connection, stop the loop."""
        self._run(self._close())
        self._stop()

    async def _close(self) -> None:
        self.pass_through()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()

    # -- modes ----------------------------------------------------------------------------

    @on_loop
    def pass_through(self) -> None:
        """Forward everything (ends any fault, releasing a hang)."""
        self.mode = "pass"
        self._flowing.set()
        for link in self._links:
            link.budget = None

    @on_loop
    def latency(self, low_ms: float, high_ms: float) -> None:
        """Delay every chunk, in each direction, by a uniform draw in [low_ms, high_ms]."""
        self.pass_through()
        self.mode = "latency"
        self._latency = (low_ms / 1000, high_ms / 1000)

    @on_loop
    def reset(self) -> None:
        """Reset every open connection, and every new one while this mode lasts."""
        self.pass_through()
        self.mode = "reset"
        for link in list(self._links):
            self._reset(link)

    @on_loop
    def reset_after(self, low: int, high: int | None = None) -> None:
        """Reset each connection after it has forwarded a further N client bytes, N in [low, high]."""
        self.pass_through()
        self.mode = "reset_after"
        self._reset_bytes = (low, high if high is not None else low)
        for link in self._links:
            link.budget = self._draw_budget()

    @on_loop
    def cut_commits(self, times: int = 1, deliver: bool = True, delay: float = 0.0) -> None:
        """Cut the next `times` connections that send COMMIT, the client never seeing the answer.

        `deliver`: COMMIT reaches the server first (it commits; its answer is dropped); else the
        connection is cut instead of forwarding it (the server rolls back). Either way the
        client cannot know which. `delay`: COMMIT reaches the server that many seconds after
        the client was cut (a late packet). After `times` cuts the proxy passes everything again.
        """
        self.pass_through()
        self.mode = "commit"
        self._commit_cuts_left = times
        self._commit_delivered = deliver
        self._commit_delay = delay

    @on_loop
    def hang(self) -> None:
        """Forward nothing in either direction, keeping every socket open (new ones too)."""
        self.pass_through()
        self.mode = "hang"
        self._flowing.clear()

    # -- relay ----------------------------------------------------------------------------

    def _draw_budget(self) -> int:
        low, high = self._reset_bytes
        return self._random.randint(low, high)

    def _reset(self, link: _PgLink) -> None:
        if not link.cut:
            self.stats.resets += 1
        link.reset()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            server = await asyncio.open_connection(*self._upstream)
        except OSError:
            hard_close(client_writer)
            return
        link = _PgLink((client_reader, client_writer), server)
        self._links.add(link)
        if self.mode == "reset":
            self._reset(link)
        elif self.mode == "reset_after":
            link.budget = self._draw_budget()
        upstream = self._spawn(self._client_to_server(link))
        downstream = self._spawn(self._server_to_client(link))
        try:
            await asyncio.gather(upstream, downstream, return_exceptions=True)
        finally:
            self._links.discard(link)
            for writer in (link.client_writer, link.server_writer):
                writer.close()

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _delay(self) -> None:
        await self._flowing.wait()
        if self.mode == "latency":
            await asyncio.sleep(self._random.uniform(*self._latency))
            await self._flowing.wait()

    async def _client_to_server(self, link: _PgLink) -> None:
        try:
            while data := await link.client_reader.read(CHUNK):
                await self._delay()
                if link.cut:
                    return
                for message, sql in link.messages(data):
                    if not self._forward_client(link, message, sql):
                        return
                await link.server_writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.cut:
                link.server_writer.close()

    def _forward_client(self, link: _PgLink, message: bytes, sql: str | None) -> bool:
        """Forward one client message, or cut the link; False once the link is cut."""
        commit = sql is not None and is_commit(sql)
        kind = message[:1]
        if not link.startup and kind == b"P" and sql is not None:
            link.prepared[message[5:].split(b"\0", 1)[0]] = sql
        elif not link.startup and kind == b"B":
            statement = message[5:].split(b"\0", 2)[1]
            link.commit_at_sync = commits_alone(link.prepared.get(statement))
        elif not link.startup and kind == b"S" and link.commit_at_sync:
            link.commit_at_sync, commit = False, True
        if commit:
            self.stats.commits_seen += 1
        if not link.startup and message[:1] in (b"Q", b"S"):
            self.stats.round_trips += 1
        if self.mode == "commit" and commit and self._commit_cuts_left > 0:
            self._commit_cuts_left -= 1
            self.stats.commits_cut += 1
            link.cut = True
            if self._commit_delivered:
                # The server gets COMMIT and answers into a connection nobody reads any more;
                # the client is reset before that answer can reach it.
                if self._commit_delay:
                    hard_close(link.client_writer)
                    asyncio.get_running_loop().call_later(self._commit_delay, _land, link, message)
                else:
                    _land(link, message)
                    hard_close(link.client_writer)
            else:
                link.reset()
            if self._commit_cuts_left == 0:
                self.mode = "pass"
            return False
        if link.budget is not None and len(message) >= link.budget:
            link.server_writer.write(message[: link.budget])
            self._reset(link)
            return False
        if link.budget is not None:
            link.budget -= len(message)
        link.server_writer.write(message)
        return True

    async def _server_to_client(self, link: _PgLink) -> None:
        first = True
        try:
            while data := await link.server_reader.read(CHUNK):
                if first and link.startup and data[:1] == b"S":
                    link.opaque = True
                first = False
                await self._delay()
                if link.cut:
                    continue
                link.client_writer.write(data)
                await link.client_writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.cut:
                link.client_writer.close()


# -- S3 --------------------------------------------------------------------------------------

S3Fault = Literal["slowdown", "internal", "truncate", "reset_upload", "drop_response"]

_ERROR_BODIES: dict[str, tuple[int, str, str]] = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


@dataclass(frozen=True)
class FaultRule:
    """Give requests with `method` (and a path `where` accepts) `fault` with probability `rate`."""

    method: str
    fault: S3Fault
    rate: float
    where: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class SeenRequest:
    """One request the S3 proxy received and what it did with it."""

    method: str
    path: str
    query: str
    fault: S3Fault | None
    status: int | None
    """Status the client was sent (None: it got no complete answer)."""


@dataclass
class _Request:
    method: str
    target: str
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    expect_continue: bool = False
    keep_alive: bool = True
    declared: int = 0

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


class S3Proxy(_Threaded):
    """An HTTP/1.1 proxy in front of an S3 server, injecting faults per request by its rules.

    Each rule whose method matches draws once (seeded); the first that fires decides the fault.
    Upstream, every request gets a fresh connection (`Connection: close`), so whatever framing
    the server uses, the client gets the whole body with a Content-Length (or a cut-short one).
    """

    def __init__(self, upstream: str, seed: int = 0) -> None:
        super().__init__()
        self.upstream = upstream
        self.rules: list[FaultRule] = []
        self.seen: list[SeenRequest] = []
        self.port = 0
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> S3Proxy:
        """Listen on a free loopback port."""
        self._server = self._run(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def endpoint(self) -> str:
        """The proxy's URL, to use as the S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @on_loop
    def inject(self, *rules: FaultRule) -> None:
        """Replace the fault rules (none: pass everything)."""
        self.rules = list(rules)

    def close(self) -> None:
        """Stop listening, drop every client connection, stop the loop."""
        self._run(self._close())
        self._stop()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            hard_close(writer)

    def requests(self, method: str | None = None, contains: str = "") -> list[SeenRequest]:
        """The requests seen so far, with `method` and a path containing `contains`."""
        return [s for s in self.seen if (method is None or s.method == method) and contains in s.path]

    # -- relay ----------------------------------------------------------------------------

    def _draw(self, request: _Request) -> S3Fault | None:
        for rule in self.rules:
            if rule.method != request.method or (rule.where is not None and not rule.where(request.path)):
                continue
            if self._random.random() < rule.rate:
                return rule.fault
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the client connection is done."""
        request = await _read_head(reader)
        if request is None:
            return False
        fault = self._draw(request)
        if fault == "reset_upload":
            # Take part of the body, then reset: nothing reaches the server.
            if request.expect_continue:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readexactly(request.declared // 2)
            self._log(request, fault, None)
            hard_close(writer)
            return False
        await _read_body(request, reader, writer)
        if fault in _ERROR_BODIES:
            status, code, message = _ERROR_BODIES[fault]
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{request.path}</Resource><RequestId>pfs-fault</RequestId></Error>"
            ).encode()
            head = [(b"Content-Type", b"application/xml"), (b"x-amz-request-id", b"pfs-fault")]
            writer.write(_response_head(status, head, len(body), request.keep_alive) + body)
            await writer.drain()
            self._log(request, fault, status)
            return request.keep_alive
        status, headers, body = await self._forward(request)
        if fault == "drop_response":
            self._log(request, fault, None)
            hard_close(writer)
            return False
        length = len(body)
        if request.method == "HEAD":
            length = int(_header(headers, b"content-length") or 0)
            body = b""
        if fault == "truncate" and len(body) > 1:
            writer.write(_response_head(status, headers, length, True) + body[: len(body) // 2])
            await writer.drain()
            self._log(request, fault, None)
            writer.close()
            return False
        writer.write(_response_head(status, headers, length, request.keep_alive) + body)
        await writer.drain()
        self._log(request, None if fault == "truncate" else fault, status)
        return request.keep_alive

    def _log(self, request: _Request, fault: S3Fault | None, status: int | None) -> None:
        self.seen.append(SeenRequest(request.method, request.path, request.query, fault, status))

    async def _forward(self, request: _Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        host, _, port = urlsplit(self.upstream).netloc.partition(":")
        reader, writer = await asyncio.open_connection(host, int(port or 80))
        try:
            lines = [request.head.split(b"\r\n", 1)[0]]
            lines += [b"%s: %s" % (k, v) for k, v in request.headers if k.lower() not in _HOP_HEADERS]
            if request.body or request.method in ("PUT", "POST"):
                lines.append(b"Content-Length: %d" % len(request.body))
            lines.append(b"Connection: close")
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + request.body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        status = int(status_line.split()[1])
        headers = [_split_header(line) for line in header_lines if b":" in line]
        if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
            body = _dechunk(body)
        elif (declared := _header(headers, b"content-length")) is not None and request.method != "HEAD":
            body = body[: int(declared)]
        return status, headers, body


async def _read_head(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head[:-4].split(b"\r\n")
    method, target, version = request_line.decode("latin-1").split(" ", 2)
    headers = [_split_header(line) for line in header_lines if b":" in line]
    connection = (_header(headers, b"connection") or b"").lower()
    keep_alive = connection != b"close" and (version != "HTTP/1.0" or connection == b"keep-alive")
    expect = (_header(headers, b"expect") or b"").lower() == b"100-continue"
    declared = int(_header(headers, b"content-length") or 0)
    kept = [(k, v) for k, v in headers if k.lower() != b"expect"]
    return _Request(method, target, head, kept, b"", expect, keep_alive, declared)


async def _read_body(request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if request.expect_continue:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if (_header(request.headers, b"transfer-encoding") or b"").lower() == b"chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        request.body = b"".join(chunks)
    else:
        request.body = await reader.readexactly(request.declared)


def _split_header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip(), value.strip()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def _response_head(status: int, headers: list[tuple[bytes, bytes]], length: int, keep_alive: bool) -> bytes:
    reason = {200: b"OK", 204: b"No Content", 206: b"Partial Content", 404: b"Not Found"}.get(status, b"-")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [b"%s: %s" % (k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]
    lines.append(b"Content-Length: %d" % length)
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
