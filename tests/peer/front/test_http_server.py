"""The connection loop: a handler's failure stays in its connection, never in the server."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from peer.front.http_server import Handler, HttpConnection, Request, serve_connection

GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


async def start_server(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve `handler` on a loopback port, as the node does (serve_listeners dies with any
    exception a connection task lets escape)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream: trio.SocketStream) -> None:
        await serve_connection(stream, handler, idle_timeout=5, send_timeout=5)

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request`, half-close, and read until the server closes (at most 5 s)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    await stream.send_eof()
    answer = b""
    with trio.move_on_after(5):
        while data := await stream.receive_some(65536):
            answer += data
    await stream.aclose()
    return answer


async def ok(conn: HttpConnection, request: Request) -> None:
    await conn.respond(200, [], b"fine")


async def test_a_handler_that_raises_gets_a_500_and_the_server_lives_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(conn: HttpConnection, request: Request) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a handler")
        await ok(conn, request)

    port = await start_server(nursery, handler)
    answer = await exchange(port, GET)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNKNOWN"
    assert "a bug in a handler" not in error["message"]  # internals stay in the log
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.exc_info is not None and "a bug in a handler" in caplog.text
    # The server still serves.
    assert (await exchange(port, GET)).endswith(b"fine")


async def test_a_handler_that_raises_mid_body_cuts_only_its_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(conn: HttpConnection, request: Request) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await conn.start_response(200, [("content-length", "100")])
            await conn.send_data(b"x" * 10)
            raise ValueError("lost the rest")
        await ok(conn, request)

    port = await start_server(nursery, handler)
    answer = await exchange(port, GET)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n" + b"x" * 10)
    assert "lost the rest" in caplog.text
    assert (await exchange(port, GET)).endswith(b"fine")


async def test_cancellation_is_not_swallowed(nursery: trio.Nursery) -> None:
    entered = trio.Event()

    async def handler(conn: HttpConnection, request: Request) -> None:
        entered.set()
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(GET)
    server_side = await listeners[0].accept()
    with trio.CancelScope() as scope:
        nursery.start_soon(_cancel_when, entered, scope)
        await serve_connection(server_side, handler, idle_timeout=5, send_timeout=5)
    assert scope.cancelled_caught
    await client.aclose()
    await listeners[0].aclose()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def test_repeated_headers_join_without_empty_elements(nursery: trio.Nursery) -> None:
    seen: list[Request] = []

    async def handler(conn: HttpConnection, request: Request) -> None:
        seen.append(request)
        await ok(conn, request)

    port = await start_server(nursery, handler)
    await exchange(
        port,
        b"GET /x HTTP/1.1\r\nHost: t\r\nAccept: a\r\nAccept:\r\nAccept: b\r\nAccept: \r\n"
        b"User-Agent:\r\n\r\n",
    )
    assert seen[0].headers["accept"] == "a, b"
    assert seen[0].headers["user-agent"] == ""


async def test_header_values_beyond_latin_1_are_sent_not_raised(nursery: trio.Nursery) -> None:
    # httpx decodes an upstream's UTF-8 header values to str; passed on, they must not raise.
    async def handler(conn: HttpConnection, request: Request) -> None:
        await conn.respond(200, [("content-type", "text/plain; x=\u20ac\u00e9")], b"ok")

    port = await start_server(nursery, handler)
    answer = await exchange(port, GET)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert "content-type: text/plain; x=\u20ac\u00e9".encode() in answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /x HTTP/1.1\r\n\r\n",  # no Host
        b"G\xe9T /x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    ],
)
async def test_a_malformed_request_gets_a_400(nursery: trio.Nursery, request_bytes: bytes) -> None:
    port = await start_server(nursery, ok)
    head, _, body = (await exchange(port, request_bytes)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["errors"][0]["code"] == "BAD_REQUEST"
