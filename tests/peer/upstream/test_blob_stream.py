"""The fast upstream body reader: framing, redirects, credentials, stalls."""

from __future__ import annotations

import contextlib
import os

import pytest
import trio

from peer.front.http_server import HttpConnection, Request, serve_connection
from peer.upstream.blob_stream import BODY_MARK, open_blob
from peer.upstream.errors import UpstreamError
from tests.peer.scripted_server import (
    INTERNAL_TARGETS,
    RebindingResolver,
    ScriptedServer,
    redirect_to,
    reply,
)


class Server:
    def __init__(self) -> None:
        self.port = 0
        self.seen: list[Request] = []
        self.routes: dict[str, object] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self.handle, idle_timeout=5, send_timeout=5)

        task_status.started()
        await trio.serve_listeners(handler, listeners)

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        self.seen.append(request)
        action = self.routes[request.target.decode()]
        await action(conn)  # type: ignore[operator]


async def read_all(
    url: str, headers: dict[str, str] | None = None, stall: float = 5
) -> tuple[int, bytes]:
    body = await open_blob(url, headers or {}, connect_timeout=5, stall_timeout=stall)
    try:
        data = bytearray()
        buffer = memoryview(bytearray(100_000))
        while count := await body.readinto(buffer):
            data += buffer[:count]
        return body.status, bytes(data)
    finally:
        await body.aclose()


async def test_content_length_and_chunked_bodies(nursery: trio.Nursery) -> None:
    server = Server()
    await nursery.start(server.serve)
    payload = os.urandom(1_234_567)

    async def fixed(conn: HttpConnection) -> None:
        await conn.respond(200, [], payload)

    async def chunked(conn: HttpConnection) -> None:
        await conn.start_response(200, [])  # no Content-Length: h11 sends it chunked
        for start in range(0, len(payload), 70_000):
            await conn.send_data(payload[start : start + 70_000])
        await conn.end_response()

    server.routes = {"/fixed": fixed, "/chunked": chunked}
    base = f"http://127.0.0.1:{server.port}"
    assert await read_all(base + "/fixed") == (200, payload)
    assert await read_all(base + "/chunked") == (200, payload)


async def test_redirect_to_another_origin_drops_credentials(nursery: trio.Nursery) -> None:
    registry, storage = Server(), Server()
    await nursery.start(registry.serve)
    await nursery.start(storage.serve)

    async def redirect(conn: HttpConnection) -> None:
        where = f"http://127.0.0.1:{storage.port}/object?sig=1"
        await conn.respond(307, [("location", where)], b"")

    async def local_redirect(conn: HttpConnection) -> None:
        await conn.respond(302, [("location", "/data")], b"")

    async def data(conn: HttpConnection) -> None:
        await conn.respond(200, [], b"blob bytes")

    registry.routes = {"/blob": redirect, "/same": local_redirect, "/data": data}
    storage.routes = {"/object?sig=1": data}
    headers = {"authorization": "Bearer secret"}
    assert await read_all(f"http://127.0.0.1:{registry.port}/blob", headers) == (200, b"blob bytes")
    assert registry.seen[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in storage.seen[0].headers
    # A redirect on the same origin keeps them (registries redirect within themselves too).
    await read_all(f"http://127.0.0.1:{registry.port}/same", headers)
    assert registry.seen[-1].headers["authorization"] == "Bearer secret"


async def test_truncated_body_and_stall_are_errors(nursery: trio.Nursery) -> None:
    server = Server()
    await nursery.start(server.serve)

    async def truncated(conn: HttpConnection) -> None:
        await conn.start_response(200, [("content-length", "1000")])
        await conn.send_data(b"x" * 10)
        await conn.stream.aclose()

    async def stall(conn: HttpConnection) -> None:
        await conn.start_response(200, [("content-length", "1000")])
        await conn.send_data(b"x" * 10)
        await trio.sleep(3)

    server.routes = {"/cut": truncated, "/stall": stall}
    base = f"http://127.0.0.1:{server.port}"
    with pytest.raises(UpstreamError, match="990 body bytes missing"):
        await read_all(base + "/cut")
    with pytest.raises(UpstreamError, match="sent nothing for"):
        await read_all(base + "/stall", stall=0.2)


async def test_unreachable_upstream_names_itself() -> None:
    with pytest.raises(UpstreamError, match="cannot connect"):
        await read_all("http://127.0.0.1:1/v2/")


class RawServer:
    """Answers every request with the same bytes, whatever they are: a registry that lies."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    break
                head += data
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(self.answer)
            await stream.aclose()

        task_status.started()
        await trio.serve_listeners(handler, listeners)


_LIES = {
    "content-length-2**63": f"200 OK\r\nContent-Length: {2**63}",
    "content-length-20-digits": f"200 OK\r\nContent-Length: {'9' * 20}",
    "content-length-5000-digits": f"200 OK\r\nContent-Length: {'9' * 5000}",
    "content-range-5000-digit-size": f"206 Partial\r\nContent-Range: bytes 0-1/{'9' * 5000}",
    "content-range-5000-digit-start": f"206 Partial\r\nContent-Range: bytes {'9' * 5000}-1/2",
    "content-range-2**63": f"206 Partial\r\nContent-Range: bytes 0-1/{2**63}",
    "redirect-to-bad-ipv6": "307 Moved\r\nLocation: http://[/x",
    "redirect-to-port-99999": "307 Moved\r\nLocation: http://127.0.0.1:99999/x",
    "redirect-to-empty-label": "307 Moved\r\nLocation: http://a..b/x",
    "redirect-to-long-label": f"307 Moved\r\nLocation: http://{'a' * 64}.io/x",
    "redirect-to-8-bit-host": "307 Moved\r\nLocation: http://\xe9\xff/x",
    "redirect-to-ftp": "307 Moved\r\nLocation: ftp://example.com/x",
}


@pytest.mark.parametrize("lie", _LIES.values(), ids=_LIES.keys())
async def test_whatever_the_upstream_answers_is_an_upstream_error(
    nursery: trio.Nursery, lie: str
) -> None:
    length = "" if "Content-Length" in lie else "\r\nContent-Length: 2"
    server = RawServer(f"HTTP/1.1 {lie}{length}\r\n\r\nxx".encode("latin-1"))
    await nursery.start(server.serve)
    url = f"http://127.0.0.1:{server.port}/v2/x/blobs/y"
    with pytest.raises(UpstreamError):
        # Refused from the head alone, before any body byte is read.
        body = await open_blob(url, {}, connect_timeout=5, stall_timeout=5)
        await body.aclose()


@pytest.mark.parametrize(
    "url", ["http://[/x", "http://127.0.0.1:99999/x", "http://a..b/x", "http://\xe9/x"]
)
async def test_a_url_that_cannot_be_fetched_is_an_upstream_error(url: str) -> None:
    with pytest.raises(UpstreamError):
        await read_all(url)


@pytest.mark.parametrize("value", ["caf\u00e9", "\u20ac", "a\x00b", "a\nb", "a "])
async def test_a_header_that_cannot_be_sent_is_an_upstream_error(
    nursery: trio.Nursery, value: str
) -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxx")
    await nursery.start(server.serve)
    with pytest.raises(UpstreamError):
        await read_all(f"http://127.0.0.1:{server.port}/x", {"accept": value})


# ---- where a redirect may lead -------------------------------------------------------------

SECRET = b"metadata-credential"


async def _secret(conn: HttpConnection, request: Request) -> None:
    await reply(conn, request, 200, [], SECRET)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("target", "kind"),
    INTERNAL_TARGETS,
)
async def test_a_redirect_to_an_internal_address_is_refused(
    nursery: trio.Nursery, method: str, target: str, kind: str
) -> None:
    internal = ScriptedServer("127.0.0.1", _secret)
    await nursery.start(internal.serve)
    evil = ScriptedServer("127.0.0.2", redirect_to(lambda _: target.format(port=internal.port)))
    await nursery.start(evil.serve)
    with pytest.raises(UpstreamError) as caught:
        body = await open_blob(
            evil.url + "/v2/x/blobs/y", {}, connect_timeout=2, stall_timeout=5, method=method
        )
        await body.aclose()
    assert caught.value.upstream == evil.url
    assert "redirected to" in caught.value.reason
    assert kind in caught.value.reason
    assert len(evil.seen) == 1
    assert internal.seen == []


async def test_a_redirect_may_stay_on_an_internal_registrys_host(nursery: trio.Nursery) -> None:
    storage = ScriptedServer("127.0.0.2", _secret)
    await nursery.start(storage.serve)
    registry = ScriptedServer(
        "127.0.0.2", redirect_to(lambda _: f"http://127.0.0.2:{storage.port}/object")
    )
    await nursery.start(registry.serve)
    assert await read_all(registry.url + "/v2/x/blobs/y") == (200, SECRET)


async def test_a_redirect_target_that_rebinds_to_loopback_is_never_sent_the_request(
    nursery: trio.Nursery,
) -> None:
    # The name passes the check (a public address), then resolves to loopback for the
    # connection: the connected address is checked again before a byte is sent.
    internal = ScriptedServer("127.0.0.1", _secret)
    await nursery.start(internal.serve)
    evil = ScriptedServer(
        "127.0.0.2", redirect_to(lambda _: f"http://rebind.test:{internal.port}/metrics")
    )
    await nursery.start(evil.serve)
    resolver = RebindingResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    with pytest.raises(UpstreamError, match="loopback"):
        await read_all(evil.url + "/v2/x/blobs/y")
    assert resolver.asked == 2
    assert internal.seen == []


async def test_a_body_that_trickles_is_read_in_large_reads_not_per_segment(
    nursery: trio.Nursery,
) -> None:
    """A registry's body over a shaped or shared link comes a few segments at a time: the
    reader is woken once BODY_MARK of it is there (SO_RCVLOWAT), not for every segment, and
    still gets every byte, the short end too."""
    server = Server()
    await nursery.start(server.serve)
    payload = os.urandom(1024 * 1024 + 1000)

    async def trickle(conn: HttpConnection) -> None:
        await conn.start_response(200, [("content-length", str(len(payload)))])
        for start in range(0, len(payload), 4096):  # 257 sends, 1 ms apart
            await conn.send_data(payload[start : start + 4096])
            await trio.sleep(0.001)
        await conn.end_response()

    server.routes = {"/trickle": trickle}
    body = await open_blob(
        f"http://127.0.0.1:{server.port}/trickle", {}, connect_timeout=5, stall_timeout=5
    )
    reads = []
    try:
        data = bytearray()
        buffer = memoryview(bytearray(len(payload)))
        while count := await body.readinto(buffer):
            reads.append(count)
            data += buffer[:count]
    finally:
        await body.aclose()
    assert bytes(data) == payload
    assert len(reads) <= 2 * len(payload) // BODY_MARK + 2, reads


async def test_bytes_below_the_mark_are_not_a_stall(nursery: trio.Nursery) -> None:
    """The stall time-out counts from the last byte that came, whether or not it woke the
    reader: a registry that sends a little just before the time-out runs out, again and
    again (each time less than the mark), and then the rest, is read to its end; so is one
    whose body trickles below the mark for longer than the time-out."""
    server = Server()
    await nursery.start(server.serve)
    payload = os.urandom(3 * BODY_MARK)

    async def late(conn: HttpConnection) -> None:
        await conn.start_response(200, [("content-length", str(len(payload)))])
        for start in range(0, 3000, 1000):
            await trio.sleep(0.8)  # of a 1 s time-out
            await conn.send_data(payload[start : start + 1000])
        await conn.send_data(payload[3000:])
        await conn.end_response()

    async def trickle(conn: HttpConnection) -> None:
        await conn.start_response(200, [("content-length", str(len(payload)))])
        for start in range(0, 20 * 1000, 1000):  # 2 s below the mark
            await conn.send_data(payload[start : start + 1000])
            await trio.sleep(0.1)
        await conn.send_data(payload[20 * 1000 :])
        await conn.end_response()

    server.routes = {"/late": late, "/trickle": trickle}
    base = f"http://127.0.0.1:{server.port}"
    assert await read_all(base + "/late", stall=1.0) == (200, payload)
    assert await read_all(base + "/trickle", stall=0.5) == (200, payload)
