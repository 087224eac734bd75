"""A small HTTP server on a chosen loopback address (127.0.0.2 stands for another host) whose
answers a test scripts: registries that redirect, and internal services that must never be
asked. Every request it gets is recorded."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Literal

import trio

from peer.front.http_server import HttpConnection, Request, serve_connection

Answer = Callable[[HttpConnection, Request], Awaitable[None]]

# Redirect targets a registry must not lead the node to (`{port}`: an internal server's), and
# the kind of address each one is.
INTERNAL_TARGETS = [
    ("http://127.0.0.1:{port}/latest/meta-data/iam", "loopback"),
    ("http://localhost:{port}/metrics", "loopback"),
    ("http://2130706433:{port}/metrics", "loopback"),  # 127.0.0.1 as one number
    ("http://0.0.0.0:{port}/metrics", "unspecified"),
    ("http://[::ffff:127.0.0.1]:{port}/metrics", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
]


async def reply(
    conn: HttpConnection, request: Request, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    """A whole answer; to a HEAD, its headers only."""
    if request.method == "HEAD":
        await conn.start_response(status, [*headers, ("content-length", str(len(body)))])
        await conn.end_response()
    else:
        await conn.respond(status, headers, body)


async def not_found(conn: HttpConnection, request: Request) -> None:
    await reply(conn, request, 404, [], b"")


class ScriptedServer:
    def __init__(self, host: str = "127.0.0.1", answer: Answer = not_found) -> None:
        self.host = host
        self.answer = answer
        self.port = 0
        self.seen: list[Request] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]

        async def handle(conn: HttpConnection, request: Request) -> None:
            self.seen.append(request)
            await self.answer(conn, request)

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, handle, idle_timeout=30, send_timeout=30)

        task_status.started()
        await trio.serve_listeners(handler, listeners)


def redirect_to(location: Callable[[Request], str], status: int = 302) -> Answer:
    """An answer that redirects every request to `location(request)`."""

    async def answer(conn: HttpConnection, request: Request) -> None:
        await reply(conn, request, status, [("location", location(request))], b"")

    return answer


class RebindingResolver(trio.abc.HostnameResolver):
    """DNS as an attacker runs it (rebinding): every name resolves to a public address the
    first time it is asked, and to `then` (the node's loopback) after that.

    Install it with `trio.socket.set_custom_hostname_resolver` (it holds for one trio run, that
    is, one test). Numeric hosts never reach it.
    """

    def __init__(self, then: str = "127.0.0.1") -> None:
        self.then = then
        self.asked = 0

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[
        tuple[Literal[socket.AddressFamily.AF_INET], socket.SocketKind, int, str, tuple[str, int]]
        | tuple[
            Literal[socket.AddressFamily.AF_INET6],
            socket.SocketKind,
            int,
            str,
            tuple[str, int, int, int] | tuple[int, bytes],
        ]
    ]:
        self.asked += 1
        address = "192.0.2.1" if self.asked == 1 else self.then  # TEST-NET-1, then loopback
        assert isinstance(port, int)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError
