"""A client that reads an answer a trickle at a time, over real loopback sockets: the node
closes it once a window of waiting carried under the minimum rate, long before the send
time-out (which such a client never meets)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import trio

from peer.front.http_server import ClientGone, HttpConnection
from peer.front.read_pace import ReadPace

MiB = 1024 * 1024


async def test_a_client_that_reads_a_trickle_is_closed(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(32 * MiB))
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await client.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    conn = HttpConnection(
        trio.SocketStream(server_sock),
        idle_timeout=5,
        send_timeout=30,  # the trickle below never lets this run out
        pace=ReadPace(min_rate=MiB, window=0.5),
    )
    closed: list[str] = []

    async def trickle() -> None:
        while not closed:
            await client.recv(1024)  # 1 KiB every 20 ms: ~50 KB/s, under the 1 MiB/s asked
            await trio.sleep(0.02)

    async def answer() -> None:
        await conn.start_response(200, [("content-length", str(32 * MiB))])
        with blob.open("rb") as source:
            try:
                await conn.send_file(source.fileno(), 0, 32 * MiB)
            except ClientGone as exc:
                closed.append(str(exc))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await answer()
            nursery.cancel_scope.cancel()
    assert closed and "reads under" in closed[0]
    for sock in (client, server_sock, listener):
        sock.close()


async def test_small_sends_on_a_busy_node_are_not_charged_to_the_client() -> None:
    # send_all's time includes the event loop's other work: a node whose loop runs behind
    # (here a task that holds it 10 ms at a time) must not cut a client that reads at once.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    conn = HttpConnection(
        trio.SocketStream(server_sock),
        idle_timeout=5,
        send_timeout=5,
        pace=ReadPace(min_rate=10 * MiB, window=0.05),
    )

    async def busy_loop() -> None:
        while True:
            time.sleep(0.01)  # the loop held by other work
            await trio.sleep(0)

    async def read_all() -> None:
        while await client.recv(65536):
            pass

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy_loop)
            nursery.start_soon(read_all)
            for _ in range(100):
                await conn._send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            nursery.cancel_scope.cancel()
    for sock in (client, server_sock, listener):
        sock.close()
