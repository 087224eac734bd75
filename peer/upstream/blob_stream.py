"""Upstream blob bodies at socket speed.

httpx (through httpcore and h11) delivered 0.94 GB/s from docker-registry on loopback, where a
plain `recv_into` loop got 2.58 GB/s (bench notes in README). Blob bodies are the bulk of what a
mirror moves, so for them only we use h11 to write the request and parse the response head, then
read a Content-Length body straight from the socket into the caller's buffers. Everything else
(manifests, access checks, error bodies) stays on httpx.

One connection per blob download: the connect cost is nothing next to a layer's bytes, and it
keeps the connection's state out of any pool.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import trio

from peer.receive_mark import ReceiveMark, SenderQuiet
from peer.upstream.client import MAX_REDIRECTS
from peer.upstream.errors import UpstreamError
from peer.upstream.headers import UnforwardableHeader, check_forwardable
from peer.upstream.redirects import (
    RedirectStart,
    check_connected_address,
    check_named_address,
    check_named_registry,
    check_redirect_target,
)

# No file can be larger (the kernel's offsets are signed 64-bit): a size or offset beyond it is a
# lie, and the store must never see it.
MAX_FILE_SIZE = 2**63 - 1
_NUMBER = re.compile(r"[0-9]+")
_RECEIVE = 256 * 1024
# A body's reader is woken once this much of it is there (or the rest of it, or the end):
# SO_RCVLOWAT, peer/receive_mark.py. An owner's registry flows came 18 KB per wake-up on the
# testbed (8 hosts, 100 Mbit/s); the fetch hands a buffer to its writer at this much anyway
# (upstream_fetch.EARLY_HANDOFF).
BODY_MARK = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: urllib.parse.SplitResult) -> _Origin:
        default = 443 if url.scheme == "https" else 80
        return cls(url.scheme, url.hostname or "", url.port or default)


class BlobStream:
    """An open upstream response; read its body with `readinto` until it returns 0."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        response: h11.Response,
        url: str,
        stall_timeout: float,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self.status = response.status_code
        self.reason = response.reason.decode("latin-1", "replace")
        self.headers: dict[str, str] = {}
        for name, value in response.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.url = url
        self._stall = stall_timeout
        for field in ("content-length", "content-range"):
            if _past_any_file(self.headers.get(field, "")):
                raise UpstreamError(url, f"sent a {field} larger than any file can be")
        # h11 has checked that a Content-Length is 1 to 20 ASCII digits.
        length = self.headers.get("content-length")
        self._left: int | None = int(length) if length is not None else None
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        # Fast path: a Content-Length body, read from the socket directly. Otherwise (chunked,
        # or a body framed by closing) h11 decodes it.
        self._raw = self._left is not None and not chunked
        self._pending = b""
        if self._raw:
            self._pending = conn.trailing_data[0]
        self._mark = ReceiveMark(stream.socket) if isinstance(stream, trio.SocketStream) else None

    async def readinto(self, buffer: memoryview) -> int:
        """Read up to len(buffer) body bytes; 0 at the end of the body.

        Raises:
            UpstreamError: the upstream stalled for the stall time-out or broke off early.
        """
        if self._raw:
            return await self._read_raw(buffer)
        return await self._read_h11(buffer)

    async def _read_raw(self, buffer: memoryview) -> int:
        assert self._left is not None
        if self._left == 0:
            return 0
        want = min(len(buffer), self._left)
        if self._pending:
            count = min(want, len(self._pending))
            buffer[:count] = self._pending[:count]
            self._pending = self._pending[count:]
        else:
            count = await self._receive_into(buffer[:want])
            if count == 0:
                raise UpstreamError(self.url, f"closed with {self._left} body bytes missing")
        self._left -= count
        return count

    async def _receive_into(self, view: memoryview) -> int:
        try:
            if self._mark is not None:
                return await self._mark.receive_into(view, BODY_MARK, quiet=self._stall)
            with trio.move_on_after(self._stall):
                data = await self._stream.receive_some(len(view))
                view[: len(data)] = data
                return len(data)
        except SenderQuiet:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamError(self.url, f"connection broke: {exc}") from exc
        raise UpstreamError(self.url, f"sent nothing for {self._stall:.0f}s")

    async def _read_h11(self, buffer: memoryview) -> int:
        while True:
            if self._pending:
                count = min(len(buffer), len(self._pending))
                buffer[:count] = self._pending[:count]
                self._pending = self._pending[count:]
                return count
            event = await _next_event(self._conn, self._stream, self._stall, self.url)
            if isinstance(event, h11.Data):
                self._pending = bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return 0

    async def read_all(self, limit: int) -> bytes:
        """The whole (small) body; for error documents."""
        chunks = []
        total = 0
        buffer = bytearray(64 * 1024)
        view = memoryview(buffer)
        while count := await self.readinto(view):
            total += count
            if total > limit:
                raise UpstreamError(self.url, f"body over {limit} bytes")
            chunks.append(bytes(view[:count]))
        return b"".join(chunks)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


async def open_blob(
    url: str,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    stall_timeout: float,
    method: str = "GET",
    named_by_client: bool = False,
) -> BlobStream:
    """Send the request and return once the response head is in; redirects are followed, to
    where `check_redirect_target` allows. `named_by_client`: the registry is one only a
    client's `?ns=` names, which must be outside this host (`check_named_registry`).

    The Authorization header is dropped when a redirect leaves the origin (object storage must
    never see registry credentials).

    Raises:
        UpstreamError: connection, TLS or protocol failure, too many redirects, a redirect to a
            URL we cannot fetch or to an internal address, a size past any file, or a header
            HTTP/1.1 cannot carry.
    """
    request_headers = dict(headers)
    try:
        check_forwardable(request_headers)
    except UnforwardableHeader as exc:
        raise UpstreamError(url, str(exc)) from None
    first = _split(url)
    origin = _Origin.of(first)
    upstream = f"{first.scheme}://{first.netloc.rpartition('@')[2]}"  # named in refusals
    start: RedirectStart | None = None  # known once the registry is connected to
    for _ in range(MAX_REDIRECTS + 1):
        parts = _split(url)
        if _Origin.of(parts) != origin:
            request_headers.pop("authorization", None)
        stream, start = await _connect(
            parts, upstream, start, connect_timeout, stall_timeout, named_by_client
        )
        try:
            conn = h11.Connection(h11.CLIENT)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.netloc.rpartition("@")[2]
            head = [("host", host), ("accept-encoding", "identity"), ("connection", "close")]
            head += [(k, v) for k, v in request_headers.items() if k.lower() != "host"]
            try:
                data = conn.send(h11.Request(method=method, target=target, headers=head)) or b""
            except (h11.LocalProtocolError, ValueError):
                # The headers were checked: it is a redirect's target or host (spaces, non-ASCII).
                raise UpstreamError(url, "cannot be asked for in HTTP/1.1") from None
            data += conn.send(h11.EndOfMessage()) or b""
            with trio.move_on_after(stall_timeout) as scope:
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, OSError) as exc:
                    raise UpstreamError(url, f"connection broke: {exc}") from exc
            if scope.cancelled_caught:
                raise UpstreamError(url, f"did not take the request in {stall_timeout:.0f}s")
            # The head within the silence time-out, whatever comes first: each `100 Continue`
            # restarted it, and a registry sending them without end held the request open
            # as long as it liked (a helper's probe, 2026-12-07).
            answer: h11.Response | None = None
            with trio.move_on_after(stall_timeout):
                while answer is None:
                    event = await _next_event(conn, stream, stall_timeout, url)
                    if isinstance(event, h11.Response):
                        answer = event
            if answer is None:
                raise UpstreamError(url, f"sent no answer in {stall_timeout:.0f}s")
            response = BlobStream(stream, conn, answer, url, stall_timeout)
        except BaseException:
            await _close(stream)
            raise
        if response.status in _REDIRECTS and "location" in response.headers:
            await response.aclose()
            try:
                url = urllib.parse.urljoin(url, response.headers["location"])
            except ValueError as exc:  # e.g. "Invalid IPv6 URL"
                raise UpstreamError(url, f"redirected to a bad URL: {exc}") from None
            continue
        return response
    raise UpstreamError(url, f"more than {MAX_REDIRECTS} redirects")


def _split(url: str) -> urllib.parse.SplitResult:
    """`url` in parts, if it is one we can fetch.

    Raises:
        UpstreamError: not an http(s) URL with a host and a port in range (a redirect's Location
            can say anything, and urlsplit raises ValueError for some of it).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when out of range
    except ValueError as exc:
        raise UpstreamError(url, f"not a URL we can fetch: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise UpstreamError(url, "not an http(s) URL")
    return parts


def _past_any_file(text: str) -> bool:
    """Whether a number in `text` (a Content-Length or Content-Range) is past MAX_FILE_SIZE.

    Python refuses to convert strings of over 4300 digits, so the digits are counted first.
    """
    for number in _NUMBER.findall(text):
        digits = number.lstrip("0")
        if len(digits) > len(str(MAX_FILE_SIZE)) or int(digits or "0") > MAX_FILE_SIZE:
            return True
    return False


async def _open_tcp(hosts: list[str], port: int) -> trio.SocketStream:
    """A TCP connection to the first of `hosts` (a name, or the addresses a check resolved it
    to, each tried in turn) that takes it.

    Raises:
        OSError: none took it (the last one's error).
    """
    for host in hosts[:-1]:
        with contextlib.suppress(OSError):
            return await trio.open_tcp_stream(host, port)
    return await trio.open_tcp_stream(hosts[-1], port)


async def _connect(
    parts: urllib.parse.SplitResult,
    upstream: str,
    start: RedirectStart | None,
    connect_timeout: float,
    stall_timeout: float,
    named_by_client: bool,
) -> tuple[trio.abc.Stream, RedirectStart]:
    """Connect to the origin of `parts`, with TLS for https.

    `start` is None for the request's first URL: the registry, which is not checked, and whose
    address tells whether it is internal (the returned RedirectStart). For a redirect, the
    target is checked by name before connecting, and by the address reached after: DNS that
    answers a public address to the check and a loopback one to the connection (rebinding)
    then gets a TCP handshake, never a request. A registry only a client named
    (`named_by_client`) is checked as a redirect's target is, against any internal address.
    """
    origin = _Origin.of(parts)
    where = f"{parts.scheme}://{parts.netloc}"
    named = start is None and named_by_client
    hosts = [origin.host]
    if named:
        hosts = await check_named_registry(
            upstream, origin.host, origin.port, timeout=connect_timeout
        )
    elif start is not None:
        await check_redirect_target(
            upstream, start, origin.host, origin.port, timeout=connect_timeout
        )
    try:
        with trio.fail_after(connect_timeout):
            tcp = await _open_tcp(hosts, origin.port)
    except trio.TooSlowError as exc:
        raise UpstreamError(where, f"no connection in {connect_timeout:.0f}s") from exc
    except OSError as exc:
        raise UpstreamError(where, f"cannot connect: {exc.strerror or exc}") from exc
    except ValueError as exc:  # the IDNA codec refuses the host name (an empty or long label)
        raise UpstreamError(where, f"cannot connect: bad host name: {exc}") from exc
    try:
        address = str(tcp.socket.getpeername()[0])
        if start is None:
            if named:
                check_named_address(upstream, origin.host, origin.port, address)
            start = RedirectStart.reached_at(origin.host, address, named_by_client=named)
        else:
            check_connected_address(upstream, start, origin.host, origin.port, address)
    except OSError as exc:  # getpeername: reset already
        await _close(tcp)
        raise UpstreamError(where, f"connection broke: {exc}") from exc
    except UpstreamError:
        await _close(tcp)
        raise
    if origin.scheme == "http":
        return tcp, start
    try:
        tls = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=origin.host)
    except ValueError as exc:  # ssl refuses the host name
        await _close(tcp)
        raise UpstreamError(where, f"bad host name for TLS: {exc}") from exc
    try:
        with trio.fail_after(stall_timeout):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError) as exc:
        await _close(tcp)
        raise UpstreamError(where, f"TLS handshake failed: {exc.__cause__ or exc}") from exc
    return tls, start


async def _next_event(
    conn: h11.Connection, stream: trio.abc.Stream, stall_timeout: float, url: str
) -> h11.Event | type[h11.PAUSED]:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(url, f"malformed HTTP response: {exc}") from exc
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError(url, "closed the connection early")
            return event  # type: ignore[return-value]
        with trio.move_on_after(stall_timeout) as scope:
            try:
                data = await stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamError(url, f"connection broke: {exc}") from exc
        if scope.cancelled_caught:
            raise UpstreamError(url, f"sent nothing for {stall_timeout:.0f}s")
        conn.receive_data(bytes(data))


async def _close(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()
