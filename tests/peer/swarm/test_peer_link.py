"""Two PeerLinks over a real socket pair: handshake, large pieces read into their own
buffers, and a cancelled piece going out as a Reject instead of its bytes; plain and sealed
(--peer-encryption), from memory and from a file (sendfile, or pread and seal)."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import trio

from peer.swarm.link import LinkClosed, PeerLink
from wire.events import Cancel, Event, FileRange, Piece, Reject, Request
from wire.protocol import Role

DIGEST = "sha256:" + "b" * 64


def link_pair(encrypt: bool = False) -> tuple[PeerLink, PeerLink]:
    """(initiator A, responder B) over a socket pair."""
    left, right = socket.socketpair()
    return (
        PeerLink(
            trio.SocketStream(trio.socket.from_stdlib_socket(left)),
            b"A" * 16,
            b"t",
            role=Role.INITIATOR,
            peer_id=b"B" * 16,
            encrypt=encrypt,
        ),
        PeerLink(
            trio.SocketStream(trio.socket.from_stdlib_socket(right)),
            b"B" * 16,
            b"t",
            role=Role.RESPONDER,
            encrypt=encrypt,
        ),
    )


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("from_file", [False, True])
async def test_pieces_arrive_whole_and_a_cancelled_one_becomes_a_reject(
    encrypt: bool, from_file: bool
) -> None:
    uploader, downloader = link_pair(encrypt)
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
        with tempfile.TemporaryFile() as f:
            f.write(b"-" * 100 + big)
            f.flush()
            payload: bytes | FileRange = FileRange(f.fileno(), 100, len(big)) if from_file else big
            assert await uploader.send(Piece(DIGEST, 0, payload)) is True
            assert await uploader.send(Piece(DIGEST, 1, payload)) is False
        with trio.fail_after(10):
            while len(received) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    first, second = received
    assert isinstance(first, Piece) and first.index == 0
    assert not isinstance(first.data, FileRange) and bytes(first.data) == big
    assert second == Reject(DIGEST, 1, "cancelled")
    assert uploader.pieces_cancelled == 1
    assert downloader.protocol.our_requests == set()


async def test_links_with_different_encryption_settings_refuse_each_other() -> None:
    left, right = socket.socketpair()
    initiator = PeerLink(
        trio.SocketStream(trio.socket.from_stdlib_socket(left)),
        b"A" * 16,
        b"t",
        role=Role.INITIATOR,
        peer_id=b"B" * 16,
        encrypt=True,
    )
    responder = PeerLink(
        trio.SocketStream(trio.socket.from_stdlib_socket(right)),
        b"B" * 16,
        b"t",
        role=Role.RESPONDER,
    )
    errors: list[str] = []

    async def handshake(link: PeerLink) -> None:
        try:
            await link.handshake()
        except LinkClosed as exc:
            errors.append(str(exc))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, initiator)
            nursery.start_soon(handshake, responder)
    assert len(errors) == 2
    assert all("peer encryption mismatch" in e for e in errors)
