"""HTTP/1.1 serving with h11 on trio: one task per connection, keep-alive, time-outs, sendfile.

Only this module touches the client socket. Body bytes from the store never pass through Python
buffers: `send_file` hands a file range to the kernel with `os.sendfile`, and h11 is only told
how many bytes went (through `send_with_data_passthrough`) so its Content-Length framing holds.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import h11
import trio

from peer.front.connection_limits import ConnectionLimits, client_key
from peer.front.drain import Drain
from peer.front.oci_errors import OciError
from peer.front.read_pace import DEFAULT_MIN_RATE, ReadPace
from peer.log_throttle import LogThrottle
from peer.sources import source_of

log = logging.getLogger("pollen.http")

MAX_REQUEST_HEAD = 64 * 1024
RECEIVE_SIZE = 64 * 1024
REFUSAL_TIMEOUT = 1.0  # seconds a refused connection may take to accept its 503
REFUSALS_LOG_PERIOD = 10.0  # at most one line a period about refused connections
_OVER_LIMIT = (
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n"
    b"content-type: text/plain\r\ncontent-length: 37\r\n\r\n"
    b"too many connections to this pollen\r\n"
)
# trio sets TCP_NOTSENT_LOWAT to 16 KiB. REFERENCE.md says raising it speeds up send_all; for
# sendfile we measured the opposite on loopback (1 GiB to curl: 3.4-3.8 GB/s at 16 KiB,
# 1.9-2.2 GB/s at 4 MiB), so trio's default stays.


_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


class ClientGone(Exception):
    """The client closed the connection, stopped reading for too long, or sent garbage."""


class BodyTooLarge(OciError):
    """A request body over what the route reads: answered 413 SIZE_INVALID like any OciError,
    and the connection closed (the rest of the body is never read)."""

    def __init__(self, limit: int) -> None:
        message = f"a request body over {limit} bytes"
        super().__init__(413, "SIZE_INVALID", message, headers=(("connection", "close"),))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: bytes
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value


class _FileRange:
    """Stands for `length` bytes that go by sendfile; h11 only needs its length."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class HttpConnection:
    """The server side of one client connection."""

    def __init__(
        self,
        stream: trio.SocketStream,
        idle_timeout: float,
        send_timeout: float,
        pace: ReadPace | None = None,
    ):
        self.stream = stream
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.pace = pace if pace is not None else ReadPace()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self.client = _peer_name(stream)
        # Whom its downloads count against (coordinator.ASKER_SHARE): its address (IPv6: its
        # /64), None for this host's own clients (loopback: its runtime).
        self.download_starter = _download_starter(stream)

    @property
    def response_started(self) -> bool:
        return self._h11.our_state is not h11.SEND_RESPONSE

    async def next_request(self) -> Request | None:
        """The next request on this connection; None when the client is done or idle too long.

        Raises:
            ClientGone: the client sent a malformed request (a 400 has been sent when possible).
        """
        request: h11.Request | None = None
        with trio.move_on_after(self.idle_timeout):
            while True:
                if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                    self._h11.start_next_cycle()
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._bad_request(exc)
                    raise ClientGone(f"malformed request: {exc}") from exc
                if event is h11.NEED_DATA:
                    try:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return None
                    self._h11.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    break
                if isinstance(event, h11.ConnectionClosed):
                    return None
                # The end of the previous request (GET and HEAD have no body; requests with
                # one are answered with Connection: close and never read).
        if request is None:
            return None
        values: dict[str, list[str]] = {}
        for raw_name, raw_value in request.headers:
            values.setdefault(raw_name.decode("latin-1"), []).append(raw_value.decode("latin-1"))
        # Repeated headers (skopeo sends one Accept per media type) are one comma list. Empty
        # elements are dropped (RFC 9110 5.6.1): "a, " could not be sent on to the upstream.
        headers = {name: ", ".join(v for v in vs if v) for name, vs in values.items()}
        return Request(request.method.decode("ascii"), request.target, headers)

    async def read_body(self, limit: int) -> bytes:
        """The request's body (a POST's JSON), at most `limit` bytes, read within the idle
        time-out.

        Raises:
            BodyTooLarge: more than `limit` bytes (answer 413 and close: the rest is unread).
            ClientGone: the client left, stalled or broke the framing.
        """
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.idle_timeout):
            while True:
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    raise ClientGone(f"malformed request body: {exc}") from exc
                if event is h11.NEED_DATA:
                    try:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        raise ClientGone("the client left mid-body")
                    self._h11.receive_data(data)
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise BodyTooLarge(limit)
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise ClientGone("the client closed the connection mid-body")
        raise ClientGone("the client stalled mid-body")

    async def _bad_request(self, exc: h11.RemoteProtocolError) -> None:
        # A request h11 refuses never reaches SEND_RESPONSE: h11 lets a server answer it from
        # IDLE (its special case for a 400).
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = _error_body("BAD_REQUEST", str(exc))
        with contextlib.suppress(ClientGone):
            await self.respond(exc.error_status_hint, [("content-type", "application/json")], body)

    async def internal_error(self) -> None:
        """Answer 500 and close, if no answer has started; after a failure in a handler."""
        if self.response_started:
            return
        body = _error_body("UNKNOWN", "internal error in pollen (the node's log has it)")
        headers = [("content-type", "application/json"), ("connection", "close")]
        with contextlib.suppress(ClientGone):
            await self.respond(500, headers, body)

    async def start_response(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Send the status line and headers (include Content-Length for a body)."""
        encoded = [(k.encode("latin-1"), _header_bytes(v)) for k, v in headers]
        reason = _REASONS.get(status, b"")
        response = h11.Response(status_code=status, headers=encoded, reason=reason)
        await self._send(self._h11.send(response))

    async def send_data(self, data: bytes) -> None:
        if data:
            await self._send(self._h11.send(h11.Data(data=data)))

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send `count` bytes of file `fd` from `offset`, kernel to kernel.

        Raises:
            ClientGone: the client closed or stopped reading for `send_timeout` seconds.
        """
        self._h11.send_with_data_passthrough(h11.Data(data=_FileRange(count)))  # type: ignore[arg-type]
        sock = self.stream.socket
        out_fd = sock.fileno()
        while count:
            try:
                sent = os.sendfile(out_fd, fd, offset, count)
            except BlockingIOError:
                waiting_since = trio.current_time()
                with trio.move_on_after(self.send_timeout) as scope:
                    await trio.lowlevel.wait_writable(sock)
                if scope.cancelled_caught:
                    raise ClientGone(f"{self.client} stopped reading") from None
                self._check_pace(trio.current_time() - waiting_since)
                continue
            except OSError as exc:
                raise ClientGone(f"{self.client}: {exc}") from exc
            if sent == 0:
                raise ClientGone(f"file ended early while sending to {self.client}")
            self.pace.sent(sent)
            offset += sent
            count -= sent
            # A fast reader keeps the socket writable: let other tasks run between calls.
            await trio.lowlevel.checkpoint()

    async def end_response(self) -> None:
        await self._send(self._h11.send(h11.EndOfMessage()))

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """A whole small response in one go."""
        await self.start_response(status, [*headers, ("content-length", str(len(body)))])
        await self.send_data(body)
        await self.end_response()

    async def _send(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.send_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone(f"{self.client} closed the connection") from exc
        if scope.cancelled_caught:
            raise ClientGone(f"{self.client} stopped reading")
        # Counted, not timed: send_all's time includes the event loop's other work (a busy
        # node would charge it to the client), and these are heads and small bodies; blobs go
        # by send_file, which times only the waits for a full socket.
        self.pace.sent(len(data))

    def _check_pace(self, waited: float) -> None:
        """The client kept us waiting `waited` seconds: close it if it reads too slowly."""
        if self.pace.waited(waited):
            raise ClientGone(
                f"{self.client} reads under {self.pace.min_rate} bytes/s (--min-read-rate)"
            )

    @property
    def keep_alive(self) -> bool:
        return self._h11.our_state is h11.DONE and self._h11.their_state in (
            h11.DONE,
            h11.SEND_BODY,
        )


def _error_body(code: str, message: str) -> bytes:
    """A body in the OCI error JSON form."""
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _header_bytes(value: str) -> bytes:
    # A value we parsed is latin-1 (one char per byte); httpx decodes an upstream's header as
    # UTF-8 when it is valid UTF-8, so a value passed on from there can hold any character.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "client"
    return f"{host}:{port}"


Handler = Callable[[HttpConnection, Request], Awaitable[None]]


class ConnectionGate:
    """Carries a front's ConnectionLimits: admits each accepted connection, and closes the ones
    the limits evict (their wait for a request is cancelled)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._scopes: dict[int, trio.CancelScope] = {}  # connections waiting for a request
        self._evicted: set[int] = set()  # evicted before their first wait began
        self._refusals_told = LogThrottle(REFUSALS_LOG_PERIOD)  # a flood must not flood the log

    def admit(self, address: str) -> int | None:
        """The new connection's ticket, or None: refuse it."""
        admission = self.limits.admit(address, trio.current_time())
        if admission.evict is not None:
            scope = self._scopes.get(admission.evict)
            if scope is not None:
                scope.cancel()
            else:
                self._evicted.add(admission.evict)
        return admission.ticket

    @contextlib.contextmanager
    def waiting(self, ticket: int) -> Iterator[trio.CancelScope]:
        """Around the wait for the connection's next request: cancelled if it is evicted."""
        scope = trio.CancelScope()
        if ticket in self._evicted:
            self._evicted.discard(ticket)
            scope.cancel()
        self.limits.waiting(ticket, trio.current_time())
        self._scopes[ticket] = scope
        try:
            with scope:
                yield scope
        finally:
            del self._scopes[ticket]
            self.limits.answering(ticket)

    def release(self, ticket: int) -> None:
        self.limits.release(ticket)
        self._evicted.discard(ticket)

    def refused(self) -> int | None:
        """A connection was refused: the number refused to report with it (this one and those
        left out of the log since the last report), or None to leave it out."""
        untold = self._refusals_told.event(trio.current_time())
        return None if untold is None else untold + 1


async def serve_connection(
    stream: trio.SocketStream,
    handler: Handler,
    idle_timeout: float,
    send_timeout: float,
    drain: Drain | None = None,
    gate: ConnectionGate | None = None,
    min_read_rate: float = DEFAULT_MIN_RATE,
) -> None:
    """Serve requests on one connection until the client leaves (or, once `drain` starts,
    until the request being answered is done; or, while it waits for a request, until `gate`
    closes it to make room; or until the client takes an answer slower than `min_read_rate`
    bytes/s over a window of waiting, read_pace.py). Refused by `gate`, the connection is
    answered 503 and closed.

    Never raises but trio.Cancelled: an exception out of here would end trio.serve_listeners
    and with it the node. A handler's unexpected exception is logged with its traceback and
    answered with a 500 (or, mid-answer, the connection is cut).
    """
    if gate is None:
        await _serve(stream, handler, idle_timeout, send_timeout, drain, None, 0, min_read_rate)
        return
    ticket = gate.admit(_client_address(stream))
    if ticket is None:
        await _refuse(stream, gate)
        return
    try:
        await _serve(
            stream, handler, idle_timeout, send_timeout, drain, gate, ticket, min_read_rate
        )
    finally:
        gate.release(ticket)


def _waiting(gate: ConnectionGate | None, ticket: int) -> ContextManager[trio.CancelScope]:
    return gate.waiting(ticket) if gate is not None else contextlib.nullcontext(trio.CancelScope())


def _download_starter(stream: trio.SocketStream) -> str | None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "client gone"
    if not isinstance(peer, tuple):
        return None  # a unix socket: this host's
    host = str(peer[0])
    return None if source_of(host)[1] else f"client {client_key(host)}"


def _client_address(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""  # gone already: counted under one name, and closed at once anyway
    return client_key(str(peer[0])) if isinstance(peer, tuple) else str(peer)


async def _refuse(stream: trio.SocketStream, gate: ConnectionGate) -> None:
    """Answer a connection over the limits with a 503 (without reading its request: a client
    reads the answer once it has sent) and close it; report the refused now and then."""
    refused, limits = gate.refused(), gate.limits
    if refused is not None:
        log.warning(
            "refused %d client connection(s): every connection was being answered (%d open, at "
            "most %d in all and %d from one address: --max-connections, "
            "--max-connections-per-address)",
            refused,
            limits.open,
            limits.total,
            limits.per_address,
        )
    with trio.move_on_after(REFUSAL_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(_OVER_LIMIT)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.aclose()


async def _serve(
    stream: trio.SocketStream,
    handler: Handler,
    idle_timeout: float,
    send_timeout: float,
    drain: Drain | None,
    gate: ConnectionGate | None,
    ticket: int,
    min_read_rate: float,
) -> None:
    drain = drain or Drain()
    conn = HttpConnection(stream, idle_timeout, send_timeout, ReadPace(min_read_rate))
    try:
        while not drain.draining:
            request = None
            with drain.idle(), _waiting(gate, ticket) as evictable:
                request = await conn.next_request()
            if request is None or evictable.cancelled_caught:
                break
            with drain.answering():
                await handler(conn, request)
            if not conn.keep_alive:
                break
    except ClientGone as exc:
        log.debug("connection from %s ended: %s", conn.client, exc)
    except h11.LocalProtocolError as exc:
        # A handler broke framing (e.g. a blob ended early): the client sees a cut stream.
        log.debug("connection to %s aborted: %s", conn.client, exc)
    except Exception:
        log.exception("internal error serving %s", conn.client)
        await conn.internal_error()
    finally:
        await stream.aclose()
