"""A client holding idle connections to the registry port, against a real node on loopback:
over the limits a new connection is answered 503 at once, other addresses are still served,
and a slot that frees is used again. (Before the limits, 19,990 idle connections from one
client took every file descriptor of the node: its registry port, admin API and peer port
all stopped accepting.)"""

from __future__ import annotations

from pathlib import Path

import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry


async def connect(port: int, source: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)


async def answer_to(stream: trio.SocketStream, request: bytes) -> bytes:
    """Send `request` (if any) and read until the node closes or a whole head is in."""
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


async def test_idle_connections_over_the_limits_are_refused_and_others_served(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=tmp_path / "store",
            default_upstream=registry.url,
            max_connections=5,
            max_connections_per_address=3,
        )
    )
    port = await nursery.start(node.run)
    get = b"GET /v2/ HTTP/1.1\r\nhost: pollen\r\n\r\n"
    idle = [await connect(port, "127.0.0.1") for _ in range(3)]
    await trio.sleep(0.2)  # accepted and admitted
    fourth = await connect(port, "127.0.0.1")
    refused = await answer_to(fourth, b"")
    assert refused.startswith(b"HTTP/1.1 503"), refused
    other = await connect(port, "127.0.0.2")
    assert (await answer_to(other, get)).startswith(b"HTTP/1.1 200")
    idle.append(await connect(port, "127.0.0.3"))  # five open in all with `other`
    await trio.sleep(0.2)
    sixth = await connect(port, "127.0.0.4")
    assert (await answer_to(sixth, get)).startswith(b"HTTP/1.1 503")
    await sixth.aclose()
    await idle[0].aclose()
    with trio.fail_after(5):  # the node sees the close and frees the slot
        while True:
            late = await connect(port, "127.0.0.4")
            answer = await answer_to(late, get)
            await late.aclose()
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await trio.sleep(0.1)
    for stream in [*idle[1:], fourth, other]:
        await stream.aclose()
