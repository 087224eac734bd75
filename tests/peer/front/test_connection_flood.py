"""A client holding connections to the registry port, against a real node on loopback: at the
limits a new connection takes the place of one that waits for a request (so idle connections
keep nobody out), it is refused with a 503 only when every connection is being answered, and
other addresses are served meanwhile. (Before the limits, 19,990 idle connections from one
client took every file descriptor of the node: its registry port, admin API and peer port
all stopped accepting.)"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry

GET_V2 = b"GET /v2/ HTTP/1.1\r\nhost: pollen\r\n\r\n"


async def connect(port: int, source: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)


async def head_of_answer(stream: trio.SocketStream, request: bytes = b"") -> bytes:
    """Send `request` (if any) and read until a whole response head is in or the node closes
    (b"" then)."""
    if request:
        await stream.send_all(request)
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def start(tmp_path: Path, nursery: trio.Nursery, registry: FakeRegistry) -> int:
    await nursery.start(registry.serve)
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=tmp_path / "store",
            default_upstream=registry.url,
            max_connections=4,
            max_connections_per_address=3,
        )
    )
    port: int = await nursery.start(node.run)
    return port


async def test_idle_connections_make_room_for_new_ones(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = await start(tmp_path, nursery, FakeRegistry())
    idle = []
    for _ in range(3):
        idle.append(await connect(port, "127.0.0.1"))
        await trio.sleep(0.05)  # accepted in this order
    fourth = await connect(port, "127.0.0.1")
    assert await head_of_answer(idle[0]) == b""  # the longest waiting, closed for it
    assert (await head_of_answer(fourth, GET_V2)).startswith(b"HTTP/1.1 200")
    other = await connect(port, "127.0.0.2")  # four open in all: an idle one gives way
    assert (await head_of_answer(other, GET_V2)).startswith(b"HTTP/1.1 200")
    for stream in [*idle, fourth, other]:
        await stream.aclose()


async def test_a_connection_is_refused_only_when_all_are_being_answered(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry(pace=0.2)  # 64 KiB every 0.2 s: each answer takes seconds
    port = await start(tmp_path, nursery, registry)
    digests = [registry.add_blob(os.urandom(1024 * 1024)) for _ in range(4)]
    busy = []
    for index, digest in enumerate(digests):
        stream = await connect(port, f"127.0.0.{10 + index}")
        request = f"GET /v2/org/app/blobs/{digest} HTTP/1.1\r\nhost: pollen\r\n\r\n"
        assert (await head_of_answer(stream, request.encode())).startswith(b"HTTP/1.1 200")
        busy.append(stream)
    refused = await connect(port, "127.0.0.20")
    assert (await head_of_answer(refused, GET_V2)).startswith(b"HTTP/1.1 503")
    await refused.aclose()
    await busy[0].aclose()  # an answer ends (the client went): its slot is free again
    with trio.fail_after(5):
        while True:
            late = await connect(port, "127.0.0.21")
            answer = await head_of_answer(late, GET_V2)
            await late.aclose()
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await trio.sleep(0.1)
    for stream in busy[1:]:
        await stream.aclose()
