"""The peer port against a host without the cluster token, over real loopback sockets:
the relay attack with an attacker task between two real PeerLinks, pre-handshake frames
announcing large pieces, and the accepting side's connection limits."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from peer.cluster.membership import Membership
from peer.fetch.coordinator import Fetch
from peer.fetch.download import BlobSource, Download
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.link_guard import LinkGuard
from peer.swarm.swarm import Swarm
from pieces.partial import PartialBlob
from pieces.store import Store
from wire.events import PROTOCOL_VERSION, Error, Event, FileRange, Hello, Piece, Proof
from wire.frames import PREFIX, FrameDecoder, encode
from wire.identity import NodeIdentity
from wire.protocol import Role

TOKEN = b"cluster token"
A, B, M = (NodeIdentity(letter * 32) for letter in (b"A", b"B", b"M"))
A_ID, B_ID, M_ID = A.node_id, B.node_id, M.node_id
IDENTITIES = {A_ID: A, B_ID: B, M_ID: M}
AT = {A_ID: "a.test:1", B_ID: "b.test:1", M_ID: "m.test:1"}  # each as the others dial it
DIGEST = "sha256:" + "b" * 64
LOOPBACK = "127.0.0.1"


def forge(event: Event, **changes: Any) -> bytes:
    """`event` changed as the attacker likes; a Hello given another callee names the address
    that callee is dialled at too (the attacker's best forgery)."""
    if isinstance(event, Hello) and "callee" in changes and "dialed" not in changes:
        callee = changes["callee"]
        changes["dialed"] = AT[callee] if callee is not None else None
    changed = dataclasses.replace(event, **changes)
    return b"".join(b for b in encode(changed) if not isinstance(b, FileRange))


def piece_announcement(size: int) -> bytes:
    _, header, _ = encode(Piece(DIGEST, 0, b""))
    assert isinstance(header, bytes)
    return PREFIX.pack(len(header) + size, len(header)) + header


class Reader:
    """The attacker's view of one connection: plain frames, one at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 20)

    async def frame(self) -> Event | None:
        """The next frame, or None at the end of the connection."""
        while (event := self.decoder.next_event()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)
        return event

    async def rest(self) -> list[Event]:
        """Every frame until the other side closes (after our own end was closed)."""
        out = []
        while (event := await self.frame()) is not None:
            out.append(event)
        return out


Outcomes = dict[bytes, BaseException | str]


def responder(
    node_id: bytes, outcomes: Outcomes, links: list[PeerLink] | None = None
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A handler that answers every connection as node `node_id` would, recording how its
    handshake ended."""

    async def handle(stream: trio.SocketStream) -> None:
        link = PeerLink(
            stream, IDENTITIES[node_id], TOKEN, role=Role.RESPONDER, address=AT[node_id]
        )
        if links is not None:
            links.append(link)
        try:
            await link.handshake()
            outcomes[node_id] = "open"
        except LinkClosed as exc:
            outcomes[node_id] = exc
        await link.close()

    return handle


async def serve(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def initiate(
    node_id: bytes, port: int, peer_id: bytes, outcomes: Outcomes, dialed: str | None = None
) -> None:
    """Dial `peer_id` at 127.0.0.1:`port` as node `node_id`, which believes it is at `dialed`
    (by default where `peer_id` is)."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    link = PeerLink(
        stream,
        IDENTITIES[node_id],
        TOKEN,
        role=Role.INITIATOR,
        address=dialed if dialed is not None else AT[peer_id],
        peer_id=peer_id,
    )
    try:
        await link.handshake()
        outcomes[node_id] = "open"
    except LinkClosed as exc:
        outcomes[node_id] = exc
    await link.close()


async def test_relaying_b_nonce_to_a_gets_the_attacker_no_link() -> None:
    """The version 1 attack: the attacker dials A and B, claims to be A towards B, and hands
    B's nonce and key to A. A, the responder, never proves first; B refuses."""
    outcomes: Outcomes = {}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port_a = await serve(nursery, responder(A_ID, outcomes))
            port_b = await serve(nursery, responder(B_ID, outcomes))
            to_a = Reader(await trio.open_tcp_stream(LOOPBACK, port_a))
            to_b = Reader(await trio.open_tcp_stream(LOOPBACK, port_b))
            own = Hello(
                PROTOCOL_VERSION,
                A_ID,
                os.urandom(32),
                os.urandom(32),
                A.public,
                B_ID,
                False,
                AT[B_ID],
            )
            await to_b.stream.send_all(forge(own))
            hello_b = await to_b.frame()
            assert isinstance(hello_b, Hello) and hello_b.node_id == B_ID
            await to_a.stream.send_all(forge(hello_b, callee=A_ID))
            hello_a = await to_a.frame()
            assert isinstance(hello_a, Hello) and hello_a.node_id == A_ID
            await to_b.stream.send_all(forge(Proof(os.urandom(32))))  # all it can offer B
            assert isinstance(await to_b.frame(), Error)
            await to_a.stream.send_eof()  # give up on A
            from_a = await to_a.rest()
            assert not any(isinstance(e, Proof) for e in from_a)  # A proved nothing
            while len(outcomes) < 2:
                await trio.sleep(0.01)
            await to_a.stream.aclose()
            await to_b.stream.aclose()
            nursery.cancel_scope.cancel()
    assert isinstance(outcomes[A_ID], LinkClosed) and isinstance(outcomes[B_ID], LinkClosed)


async def test_a_proof_carried_from_a_connection_a_opened_is_refused_by_b() -> None:
    """A dials the attacker (believing it is node M); the attacker dials B claiming to be
    A, rewrites each Hello so both see what they expect, and carries A's proof to B."""
    outcomes: Outcomes = {}
    refusals: list[Event | None] = []

    async def attacker(stream: trio.SocketStream) -> None:
        from_a = Reader(stream)
        async with await trio.open_tcp_stream(LOOPBACK, port_b) as b_stream:
            to_b = Reader(b_stream)
            hello_a = await from_a.frame()
            assert isinstance(hello_a, Hello) and hello_a.callee == M_ID
            await to_b.stream.send_all(forge(hello_a, callee=B_ID))
            hello_b = await to_b.frame()
            assert isinstance(hello_b, Hello)
            await from_a.stream.send_all(forge(hello_b, node_id=M_ID, identity=M.public))
            proof_a = await from_a.frame()
            assert isinstance(proof_a, Proof)  # A, the initiator, proves first...
            await to_b.stream.send_all(forge(proof_a))
            refusal = await to_b.frame()  # ...but only for the transcript it saw
            refusals.append(refusal)
            if refusal is not None:
                await from_a.stream.send_all(forge(refusal))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port_b = await serve(nursery, responder(B_ID, outcomes))
            port_m = await serve(nursery, attacker)
            await initiate(A_ID, port_m, M_ID, outcomes)
            while len(outcomes) < 2 or not refusals:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    (refusal,) = refusals
    assert isinstance(refusal, Error) and "token proof failed" in refusal.message
    assert isinstance(outcomes[A_ID], LinkClosed) and isinstance(outcomes[B_ID], LinkClosed)


async def test_a_link_passed_through_unchanged_from_a_pinned_address_is_refused() -> None:
    """M, a member, got A to dial B's id at M's own address (gossip is not signed) and passes
    every byte on to B unchanged: A's and B's handshake would be their own, and M in the
    middle could read and add frames (without encryption they carry no MAC). B sees from A's
    Hello that A dialled M's address, and refuses before it says anything."""
    outcomes: Outcomes = {}

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for chunk in source:
                await sink.send_all(chunk)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sink.send_eof()

    async def relay(stream: trio.SocketStream) -> None:
        async with await trio.open_tcp_stream(LOOPBACK, port_b) as to_b, trio.open_nursery() as n:
            n.start_soon(pipe, stream, to_b)
            n.start_soon(pipe, to_b, stream)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port_b = await serve(nursery, responder(B_ID, outcomes))
            port_m = await serve(nursery, relay)
            await initiate(A_ID, port_m, B_ID, outcomes, dialed=AT[M_ID])
            while len(outcomes) < 2:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert isinstance(outcomes[B_ID], LinkClosed) and "dialled m.test:1" in str(outcomes[B_ID])
    assert isinstance(outcomes[A_ID], LinkClosed)


async def test_pre_handshake_piece_announcements_close_the_link_at_once() -> None:
    count = 30
    closed: list[BaseException | str] = []
    links: list[PeerLink] = []

    async def handle(stream: trio.SocketStream) -> None:
        outcome: Outcomes = {}
        await responder(B_ID, outcome, links)(stream)
        closed.append(outcome[B_ID])

    with trio.fail_after(5):  # well inside the 10 s handshake time-out
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, handle)
            streams = []
            for _ in range(count):
                stream = await trio.open_tcp_stream(LOOPBACK, port)
                await stream.send_all(piece_announcement(16 * 1024 * 1024))
                streams.append(stream)
            for stream in streams:
                reader = Reader(stream)
                assert [type(e) for e in await reader.rest()] == [Error]
                await stream.aclose()
            while len(closed) < count:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert all(isinstance(c, LinkClosed) and "over" in str(c) for c in closed)
    assert all(link.protocol.payload_buffer() is None for link in links)


class NoUpstream:
    """The swarm's view of the fetch side, never reached by these tests."""

    async def join_for_peer(self, source: BlobSource, holders: Fetch, peer: bytes) -> Download:
        raise AssertionError("no upstream fetch expected")

    def in_flight(self, digest: str) -> Download | None:
        return None

    def blobs(self) -> int:
        return 0

    def blobs_wanted_now(self) -> int:
        return 0

    def streams(self) -> int:
        return 0

    async def fetch_runs(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob,
        runs: list[tuple[int, int]],
    ) -> None:
        raise AssertionError("no upstream fetch expected")


def make_swarm(tmp_path: Path) -> Swarm:
    membership = Membership(B_ID, (LOOPBACK, 1))
    return Swarm(
        B,
        membership,
        Store(tmp_path),
        None,  # type: ignore[arg-type]  # no access checks on these paths
        TOKEN,
        upstream=NoUpstream(),
    )


async def test_the_swarm_refuses_connections_over_its_limits_at_once(tmp_path: Path) -> None:
    swarm = make_swarm(tmp_path)
    swarm.link_guard = LinkGuard(max_per_address=3, max_handshakes=64)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, swarm._accept)
            # Three strangers that say nothing hold their handshakes open...
            quiet = [await trio.open_tcp_stream(LOOPBACK, port) for _ in range(3)]
            while swarm.link_guard.handshakes < 3:
                await trio.sleep(0.01)
            # ...so a fourth from the same address is closed before a byte is read.
            extra = await trio.open_tcp_stream(LOOPBACK, port)
            assert await extra.receive_some(100) == b""
            assert swarm.counters.links_refused == 1
            for stream in [*quiet, extra]:
                await stream.aclose()
            while swarm.link_guard.handshakes or swarm.link_guard.connections(LOOPBACK):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert swarm.counters.links_refused == 4  # the quiet ones failed their handshakes too


async def test_the_swarm_closes_every_pre_handshake_piece_announcement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    swarm = make_swarm(tmp_path)
    count = 40
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, swarm._accept)
            streams = []
            for _ in range(count):
                stream = await trio.open_tcp_stream(LOOPBACK, port)
                await stream.send_all(piece_announcement(16 * 1024 * 1024))
                streams.append(stream)
            for stream in streams:
                await Reader(stream).rest()  # until the node closes it
                await stream.aclose()
            while swarm.counters.links_refused < count:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert swarm.link_guard.handshakes == 0 and swarm.link_guard.connections(LOOPBACK) == 0
    # A stranger makes these at will: one log line a period, not one each (40 lines before).
    refusals = [r for r in caplog.records if "refused an incoming peer" in r.getMessage()]
    assert len(refusals) == 1
