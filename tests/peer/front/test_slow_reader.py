"""A client that reads an answer a trickle at a time, over real loopback sockets: the node
closes it once a window of waiting carried under the minimum rate, long before the send
time-out (which such a client never meets)."""

from __future__ import annotations

import os
import socket
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
