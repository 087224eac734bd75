"""Two PeerLinks over a real socket pair: handshake, large pieces read into their own
buffers, and a cancelled piece going out as a Reject instead of its bytes."""

from __future__ import annotations

import os
import socket

import trio

from peer.peer_link import PeerLink
from wire.events import Cancel, Event, Piece, Reject, Request

DIGEST = "sha256:" + "b" * 64


def link_pair() -> tuple[PeerLink, PeerLink]:
    left, right = socket.socketpair()
    return (
        PeerLink(trio.SocketStream(trio.socket.from_stdlib_socket(left)), b"A" * 16, b"t"),
        PeerLink(trio.SocketStream(trio.socket.from_stdlib_socket(right)), b"B" * 16, b"t"),
    )


async def test_pieces_arrive_whole_and_a_cancelled_one_becomes_a_reject() -> None:
    uploader, downloader = link_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.handshake)
        await downloader.handshake()
    big = os.urandom(3 * 1024 * 1024)  # over the direct-read size: recv_into its own buffer
    received: list[Event] = []
    requests: list[Event] = []
    cancel_seen = trio.Event()

    async def on_uploader_event(link: PeerLink, event: Event) -> None:
        requests.append(event)
        if isinstance(event, Cancel):
            link.cancelled.add((event.digest, event.index))
            cancel_seen.set()

    async def on_downloader_event(link: PeerLink, event: Event) -> None:
        received.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run, on_uploader_event)
        nursery.start_soon(downloader.run, on_downloader_event)
        await downloader.send(Request(DIGEST, 0))
        await downloader.send(Request(DIGEST, 1))
        await downloader.send(Cancel(DIGEST, 1))
        with trio.fail_after(10):
            await cancel_seen.wait()
        assert await uploader.send(Piece(DIGEST, 0, big)) is True
        assert await uploader.send(Piece(DIGEST, 1, big)) is False
        with trio.fail_after(10):
            while len(received) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    first, second = received
    assert isinstance(first, Piece) and first.index == 0 and bytes(first.data) == big
    assert second == Reject(DIGEST, 1, "cancelled")
    assert uploader.pieces_cancelled == 1
    assert downloader.protocol.our_requests == set()
