"""PeerLink over in-memory trio streams: no sockets, no ports, no sleeps.

The handshake and its refusals, pieces from memory and from a file (read and sent as bytes:
there is no socket to sendfile to), large payloads received into their own buffers (also a
few kilobytes per read), posted messages, cancelled pieces, closing, and a peer that sends
garbage. The real-socket paths (sendfile, recv_into) are tested in test_peer_link.py.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from trio.testing import (
    MemoryReceiveStream,
    MemorySendStream,
    memory_stream_pair,
    memory_stream_pump,
    wait_all_tasks_blocked,
)

from peer.swarm.link import LinkClosed, PeerLink
from wire.events import Cancel, Error, Event, FileRange, Have, Piece, Reject, Request
from wire.frames import PREFIX, FrameDecoder, encode
from wire.identity import NodeIdentity
from wire.protocol import Role, State

TOKEN = b"cluster token"
A, B, C = (NodeIdentity(letter * 32) for letter in (b"A", b"B", b"C"))
A_ID, B_ID, C_ID = A.node_id, B.node_id, C.node_id
B_AT = "127.0.0.1:65002"  # the address A dials B at, as B knows it
DIGEST = "sha256:" + "d" * 64
TIMEOUT = 10  # a guard against hanging: everything here is over in well under a second

MemoryStream = trio.StapledStream[MemorySendStream, MemoryReceiveStream]


def _trickle(
    send: MemorySendStream, receive: MemoryReceiveStream, chunk: int
) -> Callable[[], Awaitable[None]]:
    async def pump() -> None:
        while memory_stream_pump(send, receive, max_bytes=chunk):
            await trio.lowlevel.checkpoint()

    return pump


def trickling_pair(chunk: int) -> tuple[MemoryStream, MemoryStream]:
    """A memory stream pair whose bytes cross `chunk` at a time, the receiver getting its
    turn in between: a large payload takes many reads."""
    left, right = memory_stream_pair()
    left.send_stream.send_all_hook = _trickle(left.send_stream, right.receive_stream, chunk)
    right.send_stream.send_all_hook = _trickle(right.send_stream, left.receive_stream, chunk)
    return left, right


def count_reads(stream: MemoryStream) -> list[int]:
    """A one-item list holding how many times `stream` has been read from."""
    reads = [0]

    async def count() -> None:
        reads[0] += 1

    stream.receive_stream.receive_some_hook = count
    return reads


def link_pair(
    streams: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
    *,
    encrypt: bool = False,
    responder_encrypt: bool | None = None,
    responder_token: bytes = TOKEN,
    callee: bytes = B_ID,
) -> tuple[PeerLink, PeerLink]:
    """(initiator A, responder B) over `streams`, a memory stream pair by default. A means
    to reach `callee`; B has `responder_token` and `responder_encrypt` (A's setting if None)."""
    left, right = streams if streams is not None else memory_stream_pair()
    return (
        PeerLink(
            left, A, TOKEN, role=Role.INITIATOR, address=B_AT, peer_id=callee, encrypt=encrypt
        ),
        PeerLink(
            right,
            B,
            responder_token,
            role=Role.RESPONDER,
            address=B_AT,
            encrypt=encrypt if responder_encrypt is None else responder_encrypt,
        ),
    )


async def handshake(initiator: PeerLink, responder: PeerLink) -> list[str | None]:
    """Both handshakes at once: for each link, None if it opened, else why it closed."""
    outcomes: list[str | None] = [None, None]

    async def one(index: int, link: PeerLink) -> None:
        try:
            await link.handshake()
        except LinkClosed as exc:
            outcomes[index] = str(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0, initiator)
            nursery.start_soon(one, 1, responder)
    return outcomes


async def opened(
    encrypt: bool = False, streams: tuple[MemoryStream, MemoryStream] | None = None
) -> tuple[PeerLink, PeerLink]:
    """(initiator A, responder B), their handshake done."""
    initiator, responder = link_pair(streams, encrypt=encrypt)
    assert await handshake(initiator, responder) == [None, None]
    return initiator, responder


class Inbox:
    """The events a link's `run` handed over, in order."""

    def __init__(self) -> None:
        self._in, self._out = trio.open_memory_channel[Event](math.inf)

    async def on_event(self, link: PeerLink, event: Event) -> None:
        self._in.send_nowait(event)

    async def next(self) -> Event:
        with trio.fail_after(TIMEOUT):
            return await self._out.receive()

    def empty(self) -> bool:
        """Whether nothing (more) was handed over; takes the next event if there is one."""
        try:
            self._out.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


@asynccontextmanager
async def running(*links: PeerLink) -> AsyncIterator[list[Inbox]]:
    """Each link's `run` in the background, its events in an Inbox; on the way out every
    link is closed and every `run` has returned."""
    inboxes = [Inbox() for _ in links]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for link, inbox in zip(links, inboxes, strict=True):
                nursery.start_soon(link.run, inbox.on_event)
            yield inboxes
            for link in links:
                await link.close()


async def frames_until_closed(stream: trio.abc.Stream) -> list[Event]:
    """Every plain frame on `stream` until the other side closes it."""
    decoder = FrameDecoder(1 << 20)
    frames: list[Event] = []
    with trio.fail_after(TIMEOUT):
        while data := await stream.receive_some(65536):
            decoder.feed(data)
            while (event := decoder.next_event()) is not None:
                frames.append(event)
    assert not decoder.has_partial_frame
    return frames


def raw(event: Event) -> bytes:
    return b"".join(b for b in encode(event) if not isinstance(b, FileRange))


# ---- the handshake -------------------------------------------------------------------------


async def test_links_with_the_same_token_open_and_carry_events() -> None:
    initiator, responder = link_pair()
    assert await handshake(initiator, responder) == [None, None]
    assert (initiator.peer_id, responder.peer_id) == (B_ID, A_ID)
    assert initiator.protocol.state is State.OPEN and responder.protocol.state is State.OPEN
    async with running(initiator, responder) as (to_initiator, to_responder):
        await initiator.send(Have(DIGEST, 7))
        await responder.send(Have(DIGEST, 8))
        assert await to_responder.next() == Have(DIGEST, 7)
        assert await to_initiator.next() == Have(DIGEST, 8)


async def test_a_wrong_token_is_refused() -> None:
    initiator, responder = link_pair(responder_token=b"another token")
    assert await handshake(initiator, responder) == [
        "peer closed with refused: cluster token proof failed: refused",
        "cluster token proof failed: refused",
    ]
    assert initiator.closed and responder.closed
    # The responder refused before it proved anything: the initiator never verified a Proof.
    assert initiator.protocol.state is State.CLOSED


async def test_an_initiator_naming_another_node_is_refused() -> None:
    initiator, responder = link_pair(callee=C_ID)
    assert await handshake(initiator, responder) == [
        "peer closed with refused: the peer is looking for another node",
        "the peer is looking for another node",
    ]
    assert initiator.closed and responder.closed


@pytest.mark.parametrize("initiator_encrypts", [False, True])
async def test_links_with_different_encryption_settings_refuse_each_other(
    initiator_encrypts: bool,
) -> None:
    initiator, responder = link_pair(
        encrypt=initiator_encrypts, responder_encrypt=not initiator_encrypts
    )
    to_initiator, to_responder = await handshake(initiator, responder)
    ours = "on" if not initiator_encrypts else "off"
    theirs = "on" if initiator_encrypts else "off"
    expected = f"peer encryption mismatch: this node has --peer-encryption {ours}, "
    expected += f"the peer has it {theirs}"
    assert to_responder is not None and to_responder.startswith(expected)
    assert to_initiator == f"peer closed with refused: {to_responder}"


# ---- pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize("encrypt", [False, True])
async def test_a_piece_from_a_file_arrives_whole(encrypt: bool) -> None:
    uploader, downloader = await opened(encrypt)
    data = os.urandom(300 * 1024)
    with tempfile.TemporaryFile() as f:
        f.write(b"-" * 100 + data + b"+" * 100)
        f.flush()
        async with running(uploader, downloader) as (to_uploader, to_downloader):
            await downloader.send(Request(DIGEST, 3))
            assert await to_uploader.next() == Request(DIGEST, 3)
            sent = await uploader.send(Piece(DIGEST, 3, FileRange(f.fileno(), 100, len(data))))
            piece = await to_downloader.next()
    assert sent is True
    assert isinstance(piece, Piece) and (piece.digest, piece.index) == (DIGEST, 3)
    assert not isinstance(piece.data, FileRange) and bytes(piece.data) == data
    assert downloader.bytes_in == uploader.bytes_out  # every byte counted once


@pytest.mark.parametrize("encrypt", [False, True])
@pytest.mark.parametrize("trickle", [False, True])
async def test_a_large_piece_arrives_through_its_payload_buffer(
    encrypt: bool, trickle: bool
) -> None:
    streams = trickling_pair(64 * 1024) if trickle else memory_stream_pair()
    uploader, downloader = await opened(encrypt, streams)
    reads = count_reads(streams[1])
    big = os.urandom(5 * 1024 * 1024 + 3)
    async with running(uploader, downloader) as (to_uploader, to_downloader):
        await downloader.send(Request(DIGEST, 0))
        assert await to_uploader.next() == Request(DIGEST, 0)
        before = reads[0]
        assert await uploader.send(Piece(DIGEST, 0, big)) is True
        piece = await to_downloader.next()
        during = reads[0] - before
    assert isinstance(piece, Piece) and not isinstance(piece.data, FileRange)
    assert bytes(piece.data) == big
    if not encrypt:
        # The decoder's own buffer for the payload, not bytes cut out of what was read.
        assert isinstance(piece.data, bytearray)
    if trickle:
        assert during >= 16  # the buffer was filled a bit at a time
    assert downloader.bytes_in == uploader.bytes_out


async def test_a_peer_closing_in_the_middle_of_a_large_piece_ends_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uploader, downloader = await opened()
    inbox = Inbox()
    frame = raw(Piece(DIGEST, 0, b"x" * (1024 * 1024)))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(downloader.run, inbox.on_event)
            await downloader.send(Request(DIGEST, 0))
            await uploader.stream.send_all(frame[: len(frame) // 2])  # not through its link
            await wait_all_tasks_blocked()
            # The downloader is waiting for the rest of the payload, in the payload's buffer.
            rest = downloader.protocol.payload_buffer()
            assert rest is not None and len(rest) == len(frame) - len(frame) // 2
            rest.release()
            await uploader.close()
        # The nursery is done: `run` returned, without an error.
    assert "connection closed in the middle of a frame" in caplog.text
    assert downloader.closed and inbox.empty()


async def test_posted_messages_arrive_in_the_order_they_were_posted() -> None:
    sender, receiver = await opened()
    for index in range(10):  # posted before the writer runs: they wait for it
        sender.post(Have(DIGEST, index))
    async with running(sender, receiver) as (_, inbox):
        for index in range(10, 200):
            sender.post(Have(DIGEST, index))
            if index % 7 == 0:
                await trio.lowlevel.checkpoint()  # let the writer take a batch
        received = [await inbox.next() for _ in range(200)]
    assert received == [Have(DIGEST, index) for index in range(200)]


async def test_messages_posted_together_go_out_in_one_write() -> None:
    left, right = memory_stream_pair()
    sender, receiver = await opened(streams=(left, right))
    writes = [0]
    pump = left.send_stream.send_all_hook
    assert pump is not None

    async def count() -> None:
        writes[0] += 1
        await pump()

    left.send_stream.send_all_hook = count
    for index in range(50):  # posted before the writer runs: one batch
        sender.post(Have(DIGEST, index))
    async with running(sender, receiver) as (_, inbox):
        received = [await inbox.next() for _ in range(50)]
    assert received == [Have(DIGEST, index) for index in range(50)]
    assert writes[0] == 1


async def test_send_many_answers_each_event_and_rejects_cancelled_pieces() -> None:
    uploader, downloader = await opened()
    async with running(uploader, downloader) as (to_uploader, to_downloader):
        for index in range(3):
            await downloader.send(Request(DIGEST, index))
        assert [await to_uploader.next() for _ in range(3)] == [
            Request(DIGEST, index) for index in range(3)
        ]
        uploader.cancelled.add((DIGEST, 1))
        pieces = [Piece(DIGEST, index, bytes([index]) * 100) for index in range(3)]
        assert await uploader.send_many([*pieces, Have(DIGEST, 7)]) == [True, False, True, True]
        received = [await to_downloader.next() for _ in range(4)]
    assert received == [pieces[0], Reject(DIGEST, 1, "cancelled"), pieces[2], Have(DIGEST, 7)]


async def test_a_piece_whose_request_was_cancelled_goes_out_as_a_reject() -> None:
    uploader, downloader = await opened()
    async with running(uploader, downloader) as (to_uploader, to_downloader):
        await downloader.send(Request(DIGEST, 0))
        await downloader.send(Request(DIGEST, 1))
        await downloader.send(Cancel(DIGEST, 1))
        assert [await to_uploader.next() for _ in range(3)] == [
            Request(DIGEST, 0),
            Request(DIGEST, 1),
            Cancel(DIGEST, 1),
        ]
        uploader.cancelled.add((DIGEST, 1))  # what the swarm does on a Cancel
        assert await uploader.send(Piece(DIGEST, 0, b"zero" * 1000)) is True
        # Not even read: the file descriptor is not a file.
        assert await uploader.send(Piece(DIGEST, 1, FileRange(-1, 0, 1 << 20))) is False
        first, second = await to_downloader.next(), await to_downloader.next()
    assert first == Piece(DIGEST, 0, b"zero" * 1000)
    assert second == Reject(DIGEST, 1, "cancelled")
    assert uploader.pieces_cancelled == 1 and uploader.cancelled == set()
    assert downloader.protocol.our_requests == set() == uploader.protocol.their_requests


# ---- the end of a link ---------------------------------------------------------------------


async def test_closing_one_side_ends_the_other_sides_run() -> None:
    closing, other = await opened()
    inbox = Inbox()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other.run, inbox.on_event)
            await wait_all_tasks_blocked()  # `run` is waiting for bytes
            await closing.close()
        # The nursery is done: `run` returned, without an error.
    assert other.closed and inbox.empty()
    with pytest.raises(LinkClosed):
        await other.send(Have(DIGEST, 0))


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (PREFIX.pack(4, 4) + b"\xc1" * 4, "undecodable header"),
        (PREFIX.pack(2**31, 1) + b"\x00" * 64, "frame of 2147483648 bytes over"),
        (raw(Piece(DIGEST, 5, b"never asked for")), f"unrequested piece {(DIGEST, 5)}"),
    ],
    ids=["undecodable-header", "oversized-frame", "unrequested-piece"],
)
async def test_a_peer_sending_garbage_ends_only_its_own_link(garbage: bytes, reason: str) -> None:
    attacker, victim = await opened()
    other, bystander = await opened()
    victim_inbox = Inbox()
    async with running(other, bystander) as (_, to_bystander):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim.run, victim_inbox.on_event)
            await attacker.stream.send_all(garbage)  # not through its link
        # The victim's `run` returned; the other link is still up.
        await other.send(Have(DIGEST, 1))
        assert await to_bystander.next() == Have(DIGEST, 1)
        assert not bystander.closed and not other.closed
    (error,) = await frames_until_closed(attacker.stream)
    assert isinstance(error, Error) and error.code == "protocol"
    assert error.message.startswith(reason)
    assert victim.closed and victim_inbox.empty()
    with pytest.raises(LinkClosed):
        await victim.send(Have(DIGEST, 2))


async def test_request_room_counts_queued_and_outstanding_requests() -> None:
    """Several fetches share a peer's link: posting past the protocol's request limit would
    make the writer raise and the link close, so fetches ask `request_room` first."""
    initiator, responder = link_pair()
    await handshake(initiator, responder)
    limit = initiator.protocol.max_requests
    assert initiator.request_room() == limit
    async with running(initiator, responder) as (_to_initiator, to_responder):
        for index in range(3):
            initiator.post(Request(DIGEST, index))
        assert initiator.request_room() == limit - 3  # queued
        for index in range(3):
            assert await to_responder.next() == Request(DIGEST, index)
        assert initiator.request_room() == limit - 3  # sent, not answered
        initiator.post(Have(DIGEST, 1))  # not a request
        assert initiator.request_room() == limit - 3
