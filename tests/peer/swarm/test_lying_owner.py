"""A lying owner must not get an honest peer banned: it changes a piece's hash (a PieceMeta
update) after the fetching node has asked an honest member for that piece. The first hash
stays (peer/swarm/fetch.py, `_take_owner_hashes`), the true bytes are stored, nobody is
banned. A real node and registry; the owner and the honest member are scripted members."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.swarm import owner_change
from peer.swarm.bits import bits_of
from peer.swarm.link import LinkClosed, PeerLink
from pieces.partial import piece_hash
from tests.peer.fake_registry import digest_of
from tests.peer.member_node import (
    Setup,
    announce_member,
    blob_owned_by,
    node_and_registry,
    open_link,
    serve_member,
)
from wire.events import Bitfield, Event, Peers, PeersRequest, Piece, PieceMeta, Request, Want
from wire.identity import NodeIdentity

PIECE = 64 * 1024
PIECES = 16


async def test_an_owners_hash_change_does_not_get_an_honest_peer_banned(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner_change, "OWNER_STALLED", 3.0)
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        liar, liar_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        for _ in range(1000):
            data = os.urandom(PIECES * PIECE)
            if owner_order(digest_of(data), [node.node_id, liar.node_id])[0] == liar.node_id:
                break
        digest = setup.registry.add_blob(data)
        hashes = {i: piece_hash(data[i * PIECE : (i + 1) * PIECE]) for i in range(PIECES)}
        owner_link: list[PeerLink] = []

        async def liar_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):
                owner_link.append(link)
                # True hashes; it offers nothing itself.
                link.post(PieceMeta(event.digest, len(data), PIECE, hashes, []))
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))

        await serve_member(nursery, liar, liar_port, liar_on_event)
        await announce_member(setup, liar, liar_port)

        await _pull_until_fetching(setup, nursery, digest)
        swarm = node.swarm
        assert swarm is not None

        # An honest member that holds the whole blob (its true bytes) offers it.
        honest = NodeIdentity.generate()
        link = await open_link(setup, honest)
        requested: list[int] = []

        async def honest_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Request):
                requested.append(event.index)
                # The owner changes that piece's hash meanwhile.
                owner_link[0].post(
                    PieceMeta(digest, len(data), PIECE, {event.index: b"\0" * 16}, [])
                )
                await trio.sleep(0.3)
                start = event.index * PIECE
                await link.send(Piece(event.digest, event.index, data[start : start + PIECE]))

        async def run_honest() -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(honest_on_event)

        nursery.start_soon(run_honest)
        await link.send(Bitfield(digest, bits_of(range(PIECES), PIECES)))
        with trio.fail_after(20):
            while not requested:
                await trio.sleep(0.02)
        with trio.fail_after(10):
            while not swarm.is_banned(honest.node_id) and swarm.counters.pieces_from_peers == 0:
                await trio.sleep(0.02)
        # The honest member sent only true bytes of the blob.
        assert not swarm.is_banned(honest.node_id), "the honest peer was banned"
        await link.close()


async def _pull_until_fetching(setup: Setup, nursery: trio.Nursery, digest: str) -> list[bytes]:
    """A client pulls `digest` in the background; back once the node's swarm fetch of it has
    its picker (the owner answered). The blob's bytes land in the list returned."""
    pulled: list[bytes] = []

    async def pull() -> None:
        with contextlib.suppress(Exception):  # the client closes at the end of the test
            answer = await setup.client.get(f"/v2/org/app/blobs/{digest}", timeout=60)
            pulled.append(answer.content)

    nursery.start_soon(pull)
    swarm = setup.node.swarm
    assert swarm is not None
    with trio.fail_after(20):
        while not (
            (state := swarm.digests.get(digest)) is not None
            and state.fetch is not None
            and state.fetch.picker is not None
        ):
            await trio.sleep(0.02)
    return pulled


def _hashes(data: bytes) -> dict[int, bytes]:
    return {i: piece_hash(data[i * PIECE : (i + 1) * PIECE]) for i in range(PIECES)}


async def _link_running(
    setup: Setup, nursery: trio.Nursery, on_event: Callable[[PeerLink, Event], Awaitable[None]]
) -> tuple[NodeIdentity, PeerLink]:
    """A new member's link to the node, its events answered by `on_event`."""
    identity = NodeIdentity.generate()
    link = await open_link(setup, identity)

    async def run() -> None:
        with contextlib.suppress(LinkClosed):
            await link.run(on_event)

    nursery.start_soon(run)
    return identity, link


def _sending(data: bytes) -> Callable[[PeerLink, Event], Awaitable[None]]:
    """A member's answer to Requests: the pieces of `data`."""

    async def on_event(link: PeerLink, event: Event) -> None:
        if isinstance(event, Request):
            start = event.index * PIECE
            await link.send(Piece(event.digest, event.index, data[start : start + PIECE]))

    return on_event


@pytest.mark.parametrize("liar_is", ["owner", "verified-owner", "sender"])
async def test_a_piece_failing_its_hash_bans_its_sender_only_once_the_verified_blob_shows_it(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, liar_is: str
) -> None:
    """A member's piece fails the hash the owner gave: the sender lied, or the owner did
    (a false hash from the start: no change to spot). The node cannot tell yet, so the
    sender is only left out of the blob's fetch. Once the blob is whole and verified (the
    owner sends no piece: the registry does), a true piece that matches the hash shows the
    sender's bytes were wrong, and it is banned; one that fails it clears the sender, and
    the owner is not banned either (a registry may have fed it wrong bytes: blame.py),
    unless it said it held the verified blob (then the hash was a lie).
    Before, the sender was banned at once, every link to it closed: a lying owner got honest
    holders of a blob banned with one false hash."""
    monkeypatch.setattr(owner_change, "OWNER_STALLED", 3.0)
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        owner, owner_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        data = blob_owned_by(owner, node.node_id, PIECES * PIECE)
        digest = setup.registry.add_blob(data)
        hashes = _hashes(data)
        owner_lies = liar_is != "sender"
        if owner_lies:
            hashes[0] = b"\0" * 16
        verified = liar_is == "verified-owner"

        async def owner_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):  # it offers nothing itself
                link.post(PieceMeta(event.digest, len(data), PIECE, hashes, [], verified))
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))

        await serve_member(nursery, owner, owner_port, owner_on_event)
        await announce_member(setup, owner, owner_port)
        pulled = await _pull_until_fetching(setup, nursery, digest)
        swarm = node.swarm
        assert swarm is not None
        sent = data if owner_lies else os.urandom(len(data))
        sender, link = await _link_running(setup, nursery, _sending(sent))
        await link.send(Bitfield(digest, bits_of([0], PIECES)))  # it offers piece 0 only
        with trio.fail_after(20):
            while swarm.counters.bad_pieces == 0:
                await trio.sleep(0.02)
        assert not swarm.is_banned(sender.node_id), "banned before the blob could tell"
        with trio.fail_after(30):
            while not pulled or not (swarm.counters.false_hashes or swarm.counters.bans):
                await trio.sleep(0.05)
        assert pulled == [data]
        assert swarm.is_banned(sender.node_id) == (liar_is == "sender")
        assert swarm.counters.false_hashes == (liar_is == "owner")
        assert swarm.is_banned(owner.node_id) == verified
        await link.close()


@pytest.mark.parametrize(("members", "verified"), [(1, False), (2, True), (1, True)])
async def test_a_blob_from_peers_failing_its_sha256_comes_from_the_registry_next(
    tmp_path: Path, nursery: trio.Nursery, members: int, verified: bool
) -> None:
    """The owner hashes other bytes of the blob's size and sends them (alone, or half of
    them, a second member the other half): every piece passes its hash, the blob fails its
    sha256. Nobody is banned (an owner hashes what its registry sent before its own sha256
    check: an honest one fed wrong bytes does this too; and a second sender may have matched
    a hash with other bytes), and the swarm is not asked for that blob for a while: the next
    pull comes whole from the registry. Before, every pull failed the same way while the
    liar stayed. An owner that sent every piece itself, saying it held the verified blob,
    is banned: its claim and its bytes cannot both be true."""
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        owner, owner_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        data = blob_owned_by(owner, node.node_id, PIECES * PIECE)
        digest = setup.registry.add_blob(data)
        wrong = os.urandom(len(data))
        hashes = _hashes(wrong)
        offered = PIECES if members == 1 else PIECES // 2
        accomplice: list[PeerLink] = []
        send_wrong = _sending(wrong)

        async def owner_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):
                link.post(PieceMeta(event.digest, len(data), PIECE, hashes, [], verified))
                link.post(Bitfield(event.digest, bits_of(range(offered), PIECES)))
                for other in accomplice:
                    other.post(Bitfield(event.digest, bits_of(range(offered, PIECES), PIECES)))
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))
            else:
                await send_wrong(link, event)

        await serve_member(nursery, owner, owner_port, owner_on_event)
        await announce_member(setup, owner, owner_port)
        members_ids = [owner.node_id]
        if members == 2:
            second, link = await _link_running(setup, nursery, send_wrong)
            accomplice.append(link)
            members_ids.append(second.node_id)
        swarm = node.swarm
        assert swarm is not None
        path = f"/v2/org/app/blobs/{digest}"
        first: list[bytes] = []
        with contextlib.suppress(httpx.HTTPError):  # a cut stream: the bytes were wrong
            first.append((await setup.client.get(path, timeout=30)).content)
        assert data not in first
        sole_author = members == 1 and verified
        with trio.fail_after(20):
            while not (
                swarm.bans.is_distrusted(digest, trio.current_time())
                or swarm.is_banned(owner.node_id)
            ):
                await trio.sleep(0.05)
        assert swarm.counters.pieces_from_peers == PIECES
        assert swarm.counters.blobs_distrusted == (not sole_author)
        assert swarm.is_banned(owner.node_id) == sole_author
        assert not any(swarm.is_banned(member) for member in members_ids[1:])
        second_pull = await setup.client.get(path, timeout=30)
        assert second_pull.status_code == 200 and second_pull.content == data
        for link in accomplice:
            await link.close()
