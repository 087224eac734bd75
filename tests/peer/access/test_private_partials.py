"""Regression (second review): a partial opened for a resume whose first upstream request
fails stayed registered in the store; the next opener (anyone, any registry) got it back
through open_partial's 'existing' branch, with its private origins but no access check."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.front.http_server import HttpConnection, Request, serve_connection
from peer.node import Node
from pieces.store import Store
from tests.peer.fake_registry import digest_of


async def _evil(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Attacker's registry: answers any ranged blob GET with 206 and one junk byte."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(conn: HttpConnection, request: Request) -> None:
        rng = request.headers.get("range", "")
        if rng.startswith("bytes="):
            first = int(rng[6:].split("-")[0])
            size = SIZE
            await conn.start_response(
                206,
                [
                    ("content-range", f"bytes {first}-{size - 1}/{size}"),
                    ("content-length", str(size - first)),
                ],
            )
            await conn.send_data(b"\0" * (size - first))
            await conn.end_response()
        else:
            await conn.respond(404, [], b"")

    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(stream, handle, idle_timeout=30, send_timeout=30)

    task_status.started(port)
    await trio.serve_listeners(handler, listeners)


SIZE = 200_000


async def test_a_private_partial_never_reaches_a_client_naming_another_registry(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = os.urandom(SIZE)
    digest = digest_of(data)
    # The private registry is down right now (nothing listens there).
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    store_dir = tmp_path / "store"
    # A private partial left on disk by an earlier credentialed fetch (here: every piece, as
    # after a crash between verify and commit; a prefix works too, streamed unverified).
    store = Store(store_dir, 64 * 1024)
    partial = await store.open_partial(digest, SIZE, origins=[dead_url], repository=None)
    partial.write_sync(0, [data])
    store.release_partial(partial)

    evil_port = await nursery.start(_evil)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=store_dir,
        upstreams={"reg.test": dead_url, "evil.test": f"http://127.0.0.1:{evil_port}"},
        default_upstream=dead_url,
        piece_size=64 * 1024,
        upstream_timeout=2.0,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        # Any client with any Authorization naming the private registry while it is down.
        r = await client.get(
            f"/v2/a/b/blobs/{digest}?ns=reg.test", headers={"Authorization": "Bearer junk"}
        )
        assert r.status_code == 502
        with trio.fail_after(5):
            while node.downloads_in_flight():
                await trio.sleep(0.01)
        # The attacker: no credentials, a registry of its own.
        r = await client.get(f"/v2/a/b/blobs/{digest}?ns=evil.test")
        assert not (r.status_code == 200 and r.content == data), "private blob leaked"
