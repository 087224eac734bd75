"""A registry of one behaviour on loopback, for tests that script what a registry does."""

from __future__ import annotations

import trio

from peer.front.http_server import HttpConnection, Request, serve_connection


class TinyRegistry:
    """A registry of one behaviour: `handle` answers every request."""

    def __init__(self) -> None:
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        raise NotImplementedError

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self.handle, idle_timeout=30, send_timeout=30)

        task_status.started()
        await trio.serve_listeners(handler, listeners)
