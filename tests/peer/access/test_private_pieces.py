"""A member with the cluster token may ask for pieces, but a private blob's pieces go only to
a peer whose credentials a registry the blob came from accepted (through a Want or Access):
the same check as for a client of the HTTP front. Public blobs need none."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from bench.components import free_port
from peer.front.http_server import HttpConnection
from peer.front.http_server import Request as HttpRequest
from peer.swarm.link import PeerLink
from tests.peer.fake_registry import FakeRegistry
from tests.peer.member_node import Member, Setup, link_member, node_and_registry, start_node
from wire.events import (
    Access,
    Bitfield,
    Event,
    FileRange,
    Members,
    PeersRequest,
    Piece,
    Reject,
    Want,
)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    async with node_and_registry(tmp_path, nursery) as made:
        yield made


async def _cached(setup: Setup, data: bytes, token: str | None) -> str:
    digest = setup.registry.add_blob(data)
    setup.registry.token = token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await setup.client.get(f"/v2/org/app/blobs/{digest}", headers=headers)
    assert response.content == data
    with trio.fail_after(10):
        while not setup.node.store.has_blob(digest) or setup.node.downloads_in_flight():
            await trio.sleep(0.01)
    return digest


@asynccontextmanager
async def _private_blob_behind(
    tmp_path: Path, nursery: trio.Nursery, registry: FakeRegistry
) -> AsyncIterator[tuple[Setup, str]]:
    """A node in front of `registry` (started here) that holds a private blob its client
    pulled with the registry's token; the blob's digest."""
    await nursery.start(registry.serve)
    setup = await start_node(tmp_path, nursery, registry)
    async with setup.client:
        yield setup, await _cached(setup, os.urandom(256 * 1024), "s3cret")


async def test_private_pieces_need_credentials_the_origin_accepts(
    setup: Setup, nursery: trio.Nursery
) -> None:
    data = os.urandom(256 * 1024)
    digest = await _cached(setup, data, "s3cret")
    member = await link_member(setup, nursery)

    # No Want, no Access: nothing, and the answer for a blob this node never had (a member
    # must not learn which private blobs a node's clients pulled).
    not_here = await member.ask("sha256:" + "0" * 64, 0)
    assert isinstance(not_here, Reject)
    answer = await member.ask(digest, 0)
    assert isinstance(answer, Reject) and answer.reason == not_here.reason
    # Credentials the registry refuses, and a registry of the member's choosing: nothing.
    await member.link.send(Access(digest, "evil.test", "org/app", "Bearer guess"))
    answer = await member.ask(digest, 1)
    assert isinstance(answer, Reject) and answer.reason == not_here.reason
    # Good credentials: the pieces.
    await member.link.send(Access(digest, None, "org/app", "Bearer s3cret"))
    answer = await member.ask(digest, 2)
    assert isinstance(answer, Piece) and not isinstance(answer.data, FileRange)
    assert bytes(answer.data) == data[2 * 64 * 1024 : 3 * 64 * 1024]


async def test_public_pieces_need_no_credentials(setup: Setup, nursery: trio.Nursery) -> None:
    data = os.urandom(128 * 1024)
    digest = await _cached(setup, data, None)
    member = await link_member(setup, nursery)
    answer = await member.ask(digest, 1)
    assert isinstance(answer, Piece) and not isinstance(answer.data, FileRange)
    assert bytes(answer.data) == data[64 * 1024 :]


async def _bitfield_answer(member: Member, digest: str) -> Bitfield | None:
    """Send an empty Bitfield for `digest`: the node's own Bitfield in answer, if any."""
    before = len(member.offers)
    await member.link.send(Bitfield(digest, b""))
    await trio.sleep(0.5)  # bounded: an answer comes within milliseconds on loopback
    answers = [o for o in member.offers[before:] if isinstance(o, Bitfield) and o.digest == digest]
    return answers[0] if answers else None


async def test_a_private_blob_held_here_is_not_told_to_a_member_without_credentials(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """A member's Bitfield for a blob gets ours in answer when we hold it: for a private
    blob only once the member showed credentials its registry accepts (it told any member
    which private blobs this node's clients pulled); a public blob's, and one not held, as
    before."""
    public = await _cached(setup, os.urandom(128 * 1024), None)
    private = await _cached(setup, os.urandom(128 * 1024), "s3cret")
    member = await link_member(setup, nursery)
    assert await _bitfield_answer(member, public) is not None
    assert await _bitfield_answer(member, "sha256:" + "0" * 64) is None
    assert await _bitfield_answer(member, private) is None
    await member.link.send(Access(private, None, "org/app", "Bearer guess"))
    assert await _bitfield_answer(member, private) is None
    await member.link.send(Access(private, None, "org/app", "Bearer s3cret"))
    answer = await _bitfield_answer(member, private)
    assert answer is not None and answer.bits == b"\xc0"  # both pieces


async def _peers_answer(member: Member, digest: str) -> list[bytes]:
    """The node ids in the node's answer to a PeersRequest for `digest`."""
    before = len(member.peer_lists)
    await member.link.send(PeersRequest(digest))
    with trio.fail_after(5):
        while len(member.peer_lists) == before:
            await trio.sleep(0.01)
    return [entry[0] for entry in member.peer_lists[before].peers]


async def test_who_fetches_a_private_blob_is_not_told_to_a_member_without_credentials(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """The owner lists the nodes that fetch a blob to any that asks (a fetch's way to its
    peers); for a private blob only to a member whose credentials its registry accepted (it
    told any member which nodes pulled which private image)."""
    public = await _cached(setup, os.urandom(128 * 1024), None)
    private = await _cached(setup, os.urandom(128 * 1024), "s3cret")  # the registry's token now
    fetcher = await link_member(setup, nursery)  # a member; wants both, with good credentials
    fetcher_id = fetcher.link.protocol.node_id
    await fetcher.link.send(Members([(fetcher_id, "127.0.0.1", free_port(), 0, 0, 0)], reply=True))
    for digest in (private, public):
        await fetcher.link.send(Want(digest, None, "org/app", "Bearer s3cret"))
    with trio.fail_after(5):
        while len(fetcher.metas) < 2:
            await trio.sleep(0.01)
    snoop = await link_member(setup, nursery)
    assert await _peers_answer(snoop, public) == [fetcher_id]
    assert await _peers_answer(snoop, private) == []
    await snoop.link.send(Access(private, None, "org/app", "Bearer guess"))
    assert await _peers_answer(snoop, private) == []
    await snoop.link.send(Access(private, None, "org/app", "Bearer s3cret"))
    assert await _peers_answer(snoop, private) == [fetcher_id]


class PartlyPublicRegistry(FakeRegistry):
    """Everything under /v2/pub/ is public; the rest needs the token."""

    async def _handle(self, conn: HttpConnection, request: HttpRequest) -> None:
        if not request.target.startswith(b"/v2/pub/"):
            await super()._handle(conn, request)
            return
        saved, self.token = self.token, None
        try:
            await super()._handle(conn, request)
        finally:
            self.token = saved


async def test_a_repository_name_cannot_steer_the_access_check(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """`pub/x/manifests/v1?` as a repository would make the check ask for a public manifest
    and answer yes for a private blob."""
    registry = PartlyPublicRegistry()
    async with _private_blob_behind(tmp_path, nursery, registry) as (setup, digest):
        registry.add_manifest("v1", b'{"schemaVersion":2}')
        member = await link_member(setup, nursery)
        await member.link.send(Access(digest, None, "pub/x/manifests/v1?", None))
        answer = await member.ask(digest, 2)
        assert not isinstance(answer, Piece)


async def test_only_the_owner_says_what_a_blob_is() -> None:
    """A PieceMeta from any other member (say, one with no origins: 'public') is ignored:
    otherwise it could strip a private blob's marking or plant piece hashes."""
    from peer.fetch.download import Download
    from peer.swarm.digest_state import DigestState
    from peer.swarm.fetch import SwarmFetch
    from wire.events import PieceMeta

    digest = "sha256:" + "c" * 64
    owner, liar = b"O" * 16, b"L" * 16
    fetch = SwarmFetch(
        None,  # type: ignore[arg-type]  # not reached: the event is dropped before
        DigestState(digest),
        Download(digest, None, "org/app", "key"),
        {"authorization": "Bearer s3cret"},
    )
    fetch.owner = owner

    class Link:
        peer_id = liar

    lie = PieceMeta(digest, 1000, 100, {0: b"h" * 16}, origins=[])
    await fetch.on_event(Link(), lie)  # type: ignore[arg-type]
    assert fetch._meta is None and not fetch.hashes
    Link.peer_id = owner
    truth = PieceMeta(digest, 1000, 100, {}, origins=["https://reg.test"])
    await fetch.on_event(Link(), truth)  # type: ignore[arg-type]
    assert fetch._meta is truth


async def test_a_grant_made_while_a_blob_was_public_does_not_outlive_its_privacy(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """A member's Want for a blob fetched without credentials (public, and in the attack
    failing its sha256) must not leave a grant that later covers the private copy."""
    from wire.events import Want

    data = os.urandom(256 * 1024)
    digest = setup.registry.add_blob(data)
    setup.registry.lie_about.add(digest)  # the anonymous fetch gets wrong bytes: it fails
    member = await link_member(setup, nursery)
    await member.link.send(Want(digest, None, "org/app", None))
    with trio.fail_after(10):
        while not setup.node.downloads.failed:  # type: ignore[union-attr]
            await trio.sleep(0.01)
    setup.registry.lie_about.clear()
    await _cached(setup, data, "s3cret")  # now an authorised pull stores the private blob
    answer = await member.ask(digest, 0)
    assert not isinstance(answer, Piece)


async def test_requests_for_blobs_nobody_has_leave_no_state_behind(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """Clients and members can name any digest: what the node keeps for one must go when
    nothing of it is held or in flight (else memory grows with every random digest)."""
    from wire.events import Bitfield, Have, PeersRequest, Want

    randoms = ["sha256:" + os.urandom(32).hex() for _ in range(50)]
    for digest in randoms[:25]:
        response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code == 404
    member = await link_member(setup, nursery)
    for digest in randoms[25:]:
        await member.link.send(Want(digest, None, "org/app", None))
        await member.link.send(Bitfield(digest, b"\xff"))
        await member.link.send(Have(digest, 3))
        await member.link.send(PeersRequest(digest))
    swarm = setup.node.swarm
    assert swarm is not None
    with trio.move_on_after(10):
        while setup.node.downloads_in_flight() or any(d in swarm.digests for d in randoms):
            await trio.sleep(0.02)
    left = [d for d in randoms if d in swarm.digests]
    assert not left, (randoms.index(left[0]), swarm.digests[left[0]])


async def test_a_members_want_cannot_point_the_owner_at_an_internal_host(
    setup: Setup, nursery: trio.Nursery
) -> None:
    from wire.events import Refused, Want

    refused: list[Refused] = []
    member = await link_member(setup, nursery)
    original = member.on_event

    async def on_event(link: PeerLink, event: Event) -> None:
        if isinstance(event, Refused):
            refused.append(event)
        await original(link, event)

    member.on_event = on_event  # type: ignore[method-assign]
    digest = "sha256:" + "d" * 64
    await member.link.send(Want(digest, "127.0.0.1:9", "org/app", None))
    with trio.fail_after(10):
        while not refused:
            await trio.sleep(0.01)
    assert refused[0].status == 400
    assert not setup.node.downloads_in_flight()


async def test_a_fetch_passes_its_credentials_on_again_before_peers_grants_run_out(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A peer's grant lasts DEFAULT_TTL; a long transfer must not be refused midway."""
    from peer.access.auth_gate import DEFAULT_TTL
    from peer.fetch.download import Download
    from peer.swarm.digest_state import DigestState
    from peer.swarm.fetch import SwarmFetch
    from peer.swarm.swarm import ACCESS_REFRESH

    digest = "sha256:" + "e" * 64
    peer = b"P" * 16
    sent: list[tuple[bytes, Event]] = []

    class FakeLink:
        closed = False

        def __init__(self, peer_id: bytes) -> None:
            self.peer_id = peer_id

        def post(self, event: Event) -> None:
            sent.append((self.peer_id, event))

    class FakeStore:
        def is_private(self, _digest: str) -> bool:
            return True

    class FakeSwarm:
        store = FakeStore()
        links = {peer: FakeLink(peer)}
        access_refresh = ACCESS_REFRESH

    fetch = SwarmFetch(
        FakeSwarm(),  # type: ignore[arg-type]
        DigestState(digest),
        Download(digest, None, "org/app", "key"),
        {"authorization": "Bearer s3cret"},
    )
    fetch._send_access({peer})
    fetch._send_access({peer})  # at once again: nothing new
    assert len(sent) == 1 and isinstance(sent[0][1], Access)
    mock_clock.jump(ACCESS_REFRESH + 1)
    fetch._send_access({peer})
    assert len(sent) == 2
    assert ACCESS_REFRESH < DEFAULT_TTL


async def test_a_full_disk_while_storing_a_piece_fails_the_fetch_not_the_link() -> None:
    """A store error is ours, not the peer's: it must end the fetch (its clients get a clear
    status) and leave the link alone, not escape into the link's read loop."""
    import random

    from peer.fetch.download import Download
    from peer.swarm.digest_state import DigestState
    from peer.swarm.fetch import SwarmFetch
    from peer.swarm.picker import PiecePicker
    from pieces.layout import PieceLayout
    from pieces.partial import NoRoom, piece_hash

    digest = "sha256:" + "f" * 64
    data = os.urandom(1000)

    class FullStore:
        def ensure_room(self, _blob: object, _incoming: int) -> None:
            raise NoRoom("no room for the test")

    class FakeSwarm:
        store = FullStore()
        links: dict[bytes, object] = {}

    class FakePartial:
        layout = PieceLayout(1000, 1000)
        piece_hashes: dict[int, bytes] = {}

    class Link:
        peer_id = b"P" * 16
        closed = False

    fetch = SwarmFetch(
        FakeSwarm(),  # type: ignore[arg-type]
        DigestState(digest),
        Download(digest, None, "org/app", None),
        {},
    )
    fetch.partial = FakePartial()  # type: ignore[assignment]
    picker = fetch.picker = PiecePicker(digest, FakePartial.layout, random.Random(0))
    fetch.hashes[0] = piece_hash(data)
    picker.hashes([0])
    picker.bitfield(Link.peer_id, [0])
    assert picker.schedule(0.0)  # piece 0 asked of the peer
    await fetch._store_piece(Link(), Piece(digest, 0, data))  # type: ignore[arg-type]
    assert isinstance(fetch.failure, NoRoom)
    assert 0 in picker.missing and not picker.inflight  # to be asked again, not lost


class SlowHeadRegistry(FakeRegistry):
    """Access checks (HEADs) take `head_delay` seconds."""

    head_delay = 0.0

    async def _handle(self, conn: HttpConnection, request: HttpRequest) -> None:
        if request.method == "HEAD":
            await trio.sleep(self.head_delay)
        await super()._handle(conn, request)


async def test_a_request_while_the_peers_credentials_are_checked_waits_for_the_check(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A fetch sends its Access, then its Bitfield, then Requests: the Bitfield's answer waits
    for the check of the Access, and a Request that comes meanwhile must wait for that same
    check, not find the Access used and be refused (a member with good credentials was)."""
    registry = SlowHeadRegistry()
    async with _private_blob_behind(tmp_path, nursery, registry) as (setup, digest):
        assert setup.node.swarm is not None
        # The check takes a registry round trip (another node's client; or 60 s went by).
        setup.node.swarm.grants._access._gate._accepted.clear()
        registry.head_delay = 0.3
        member = await link_member(setup, nursery)
        await member.link.send(Access(digest, None, "org/app", "Bearer s3cret"))
        await member.link.send(Bitfield(digest, b""))
        answer = await member.ask(digest, 0)
        assert isinstance(answer, Piece), answer
        with trio.fail_after(5):
            while not any(isinstance(o, Bitfield) for o in member.offers):
                await trio.sleep(0.01)
