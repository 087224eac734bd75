"""The upload side on its own: a choke refuses what is still queued; slots are held by links;
the owner's first copies go first; a piece going out holds its blob against eviction (no
sockets)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from peer.rate_limit import RateLimiter
from peer.swarm.choker import UNCHOKED, Choker
from peer.swarm.upload_lanes import TURN_PIECES, UploadLanes
from peer.swarm.uploads import Uploads
from wire.events import Event, FileRange, Piece, Reject, Request

DIGEST = "sha256:" + "b" * 64


@dataclass
class Counters:
    bytes_to_peers: int = 0
    pieces_to_peers: int = 0
    pieces_pushed: int = 0
    uploads_cancelled: int = 0


@dataclass(eq=False)
class Link:
    """A PeerLink stand-in (hence the ignores where it is passed): records what is sent; a
    Piece waits until `release` is set, holding its upload slot meanwhile."""

    peer_id: bytes
    release: trio.Event = field(default_factory=trio.Event)
    sent: list[Event] = field(default_factory=list)
    cancelled: set[tuple[str, int]] = field(default_factory=set)
    closed: bool = False
    log: list[tuple[bytes, Event]] | None = None  # shared by links: the order of all sends

    async def send(self, event: Event) -> bool:
        if isinstance(event, Piece):
            await self.release.wait()
        self.sent.append(event)
        if self.log is not None:
            self.log.append((self.peer_id, event))
        return True


class Store:
    def __init__(self, path: Path) -> None:
        path.write_bytes(os.urandom(1000))
        self.path = path
        self.held: list[str] = []  # digests held against eviction now

    @contextlib.contextmanager
    def holding(self, digest: str) -> Iterator[None]:
        self.held.append(digest)
        try:
            yield
        finally:
            self.held.remove(digest)

    def open_piece_sync(self, digest: str, index: int, piece_size: int) -> tuple[int, int, int]:
        return os.open(self.path, os.O_RDONLY), 0, 1000


@dataclass
class Grants:
    """Access to pieces: `granted` False is a private blob the asker showed no credentials
    for."""

    granted: bool = True

    async def may_have_pieces(self, peer: bytes, digest: str) -> bool:
        return self.granted


def _uploads(
    tmp_path: Path,
    urgent: str | None = None,
    choker: Choker | None = None,
    counters: Counters | None = None,
    stored_at: dict[int, float] | None = None,
    sent: list[tuple[bytes, str, int]] | None = None,
    held: bool = True,
    granted: bool = True,
) -> Uploads:
    """Uploads with one slot, over a 1000-byte piece file; `urgent`: a blob being seeded;
    `sent`: where the pieces that went out whole are noted; `held`: is every piece here (or
    none)? `granted`: may the asker have the blob's pieces?"""
    noted = sent if sent is not None else []
    return Uploads(
        Store(tmp_path / "blob"),  # type: ignore[arg-type]
        choker or Choker(random.Random(1), 0.0),
        Grants(granted),  # type: ignore[arg-type]
        counters or Counters(),
        RateLimiter(None),
        lambda _digest: 1000,
        lambda digest: digest == urgent,
        lambda _digest, index: (stored_at or {}).get(index),
        lambda _digest, _index: held,
        lambda peer, digest, index: noted.append((peer, digest, index)),
        slots=1,
    )


async def test_a_peer_choked_while_its_request_waits_for_a_slot_gets_a_reject(
    tmp_path: Path,
) -> None:
    choker = Choker(random.Random(1), 0.0)
    counters = Counters()
    uploads = _uploads(tmp_path, choker=choker, counters=counters)
    first, second = Link(b"A" * 16), Link(b"B" * 16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.serve, first, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(uploads.serve, second, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        choker.choked.add(second.peer_id)  # a rechoke meanwhile
        first.release.set()
    assert [type(e) for e in first.sent] == [Piece]
    assert second.sent == [Reject(DIGEST, 0, "choked")]
    assert counters.pieces_to_peers == 1


async def test_a_piece_that_went_out_whole_is_told_and_a_refused_one_is_not(
    tmp_path: Path,
) -> None:
    # An owner's seeding counts a piece sent as its peer's (peer/swarm/swarm.py, _piece_sent):
    # the peer's Have may wait behind the pieces that peer sends us.
    choker = Choker(random.Random(1), 0.0)
    sent: list[tuple[bytes, str, int]] = []
    uploads = _uploads(tmp_path, choker=choker, sent=sent)
    first, second = Link(b"A" * 16), Link(b"B" * 16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.serve, first, Request(DIGEST, 3))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # not before it went out
        nursery.start_soon(uploads.serve, second, Request(DIGEST, 4))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        choker.choked.add(second.peer_id)  # refused when its turn comes
        first.release.set()
    assert sent == [(first.peer_id, DIGEST, 3)]
    assert second.sent == [Reject(DIGEST, 4, "choked")]


@pytest.mark.parametrize(
    ("held", "granted"), [(False, True), (True, False)], ids=["not-held", "private-no-credentials"]
)
async def test_a_request_that_cannot_be_served_takes_no_unchoked_place(
    tmp_path: Path, held: bool, granted: bool
) -> None:
    """The choker was asked before the holdings and access checks: a peer asking for pieces
    this node lacks, or for a private blob's pieces it showed no credentials for, counted as
    asking and, never served, ranked first at every rechoke; a few members could hold the
    unchoked places so, and the peers that can be served waited choked. Both get the same
    answer ("missing"), so a member learns nothing of which private blobs are here."""
    choker = Choker(random.Random(1), 0.0)
    now = trio.current_time()
    for i in range(UNCHOKED):
        choker.request(bytes([i]) * 16, now)
        choker.served(bytes([i]) * 16, 1000)
    uploads = _uploads(tmp_path, choker=choker, held=held, granted=granted)
    asker = Link(b"X" * 16)
    await uploads.serve(asker, Request(DIGEST, 0))  # type: ignore[arg-type]
    assert asker.sent == [Reject(DIGEST, 0, "missing")]
    choker.rechoke(trio.current_time())
    assert not choker.choked  # the 16 that can be served keep the 16 places


async def test_an_unchoked_waiting_request_is_served(tmp_path: Path) -> None:
    uploads = _uploads(tmp_path)
    first, second = Link(b"A" * 16), Link(b"B" * 16)
    second.release.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.serve, first, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(uploads.serve, second, Request(DIGEST, 1))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        first.release.set()
    assert len(second.sent) == 1 and isinstance(second.sent[0], Piece)
    assert isinstance(second.sent[0].data, FileRange)


async def test_a_blob_is_held_against_eviction_while_a_piece_of_it_goes_out(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "blob")
    uploads = Uploads(
        store,  # type: ignore[arg-type]
        Choker(random.Random(1), 0.0),
        Grants(),  # type: ignore[arg-type]
        Counters(),
        RateLimiter(None),
        lambda _digest: 1000,
        lambda _digest: False,
        lambda _digest, _index: None,
        lambda _digest, _index: True,
        lambda _peer, _digest, _index: None,
    )
    link = Link(b"A" * 16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.serve, link, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert store.held == [DIGEST]  # the piece is on its way
        link.release.set()
    assert store.held == [] and len(link.sent) == 1


async def _ask_in_turn(
    nursery: trio.Nursery, uploads: Uploads, asks: list[tuple[Link, Request]]
) -> None:
    """Each request arrives once the ones before it are waiting (or sending)."""
    for link, request in asks:
        nursery.start_soon(uploads.serve, link, request)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()


async def test_a_slot_is_held_by_a_link_until_its_queued_requests_are_sent(
    tmp_path: Path,
) -> None:
    """One slot: the link that has it sends all its queued pieces, one at a time, before the
    next link gets the slot (a slot per piece let one link's queue take every slot)."""
    uploads = _uploads(tmp_path)
    log: list[tuple[bytes, Event]] = []
    first, second = Link(b"A" * 16, log=log), Link(b"B" * 16, log=log)
    async with trio.open_nursery() as nursery:
        asks = [(first, Request(DIGEST, 0)), (second, Request(DIGEST, 0))]
        await _ask_in_turn(nursery, uploads, [*asks, (first, Request(DIGEST, 1))])
        assert uploads.lanes.serving == [first.peer_id]
        assert uploads.lanes.waiting == [second.peer_id]
        assert uploads.lanes.queued(first.peer_id) == 1  # piece 1 waits behind piece 0
        second.release.set()
        first.release.set()
    assert [(peer, event.index) for peer, event in log] == [  # type: ignore[union-attr]
        (first.peer_id, 0),
        (first.peer_id, 1),
        (second.peer_id, 0),
    ]
    assert uploads.lanes.serving == [] and uploads.lanes.waiting == []


async def test_the_owners_first_copies_go_before_other_pieces(tmp_path: Path) -> None:
    seeding = "sha256:" + "c" * 64
    uploads = _uploads(tmp_path, urgent=seeding)
    log: list[tuple[bytes, Event]] = []
    busy, other, first_copy = (Link(bytes([n]) * 16, log=log) for n in (1, 2, 3))
    async with trio.open_nursery() as nursery:
        asks = [(busy, Request(DIGEST, 0)), (other, Request(DIGEST, 0))]
        await _ask_in_turn(nursery, uploads, [*asks, (first_copy, Request(seeding, 0))])
        for link in (busy, other, first_copy):
            link.release.set()
    assert [peer for peer, _ in log] == [busy.peer_id, first_copy.peer_id, other.peer_id]


async def test_on_a_link_the_piece_stored_here_last_goes_out_first(tmp_path: Path) -> None:
    # Piece 2 was stored here after piece 1 (and piece 3 long ago): behind the piece going
    # out, 2 goes before 1, and 3 last.
    uploads = _uploads(tmp_path, stored_at={1: 5.0, 2: 9.0})
    log: list[tuple[bytes, Event]] = []
    link = Link(b"A" * 16, log=log)
    async with trio.open_nursery() as nursery:
        asks = [(link, Request(DIGEST, i)) for i in (0, 3, 1, 2)]
        await _ask_in_turn(nursery, uploads, asks)
        link.release.set()
    assert [event.index for _, event in log] == [0, 2, 1, 3]  # type: ignore[union-attr]


async def test_the_requests_of_a_closed_link_end_and_pass_the_slot_on(tmp_path: Path) -> None:
    uploads = _uploads(tmp_path)
    gone, waiting = Link(b"A" * 16), Link(b"B" * 16)
    waiting.release.set()
    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(uploads.serve, gone, Request(DIGEST, index))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(uploads.serve, waiting, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        gone.closed = True
        gone.release.set()  # the piece under way ends (a real link raises LinkClosed)
    assert len(gone.sent) == 1  # the two queued behind it were never sent
    assert len(waiting.sent) == 1 and isinstance(waiting.sent[0], Piece)


async def test_a_peer_that_keeps_requests_queued_cannot_keep_the_slot(tmp_path: Path) -> None:
    """An attacker's peer queues more requests than one turn while another peer waits: the
    other is served after at most TURN_PIECES of the attacker's pieces, not after all."""
    uploads = _uploads(tmp_path)
    log: list[tuple[bytes, Event]] = []
    hog, other = Link(b"H" * 16, log=log), Link(b"O" * 16, log=log)
    hog.release.set()
    other.release.set()
    async with trio.open_nursery() as nursery:
        hog_requests = [(hog, Request(DIGEST, i)) for i in range(TURN_PIECES + 40)]
        for link, request in [*hog_requests[:1], (other, Request(DIGEST, 0)), *hog_requests[1:]]:
            nursery.start_soon(uploads.serve, link, request)  # type: ignore[arg-type]
    senders = [peer for peer, _ in log]
    assert len(senders) == TURN_PIECES + 41
    assert senders.index(other.peer_id) <= TURN_PIECES


@dataclass(eq=False)
class TimedLink(Link):
    """A link whose every piece takes `seconds` to go out (its receiver's downlink, say)."""

    seconds: float = 0.0

    async def send(self, event: Event) -> bool:
        if isinstance(event, Piece):
            await trio.sleep(self.seconds)
        self.sent.append(event)
        if self.log is not None:
            self.log.append((self.peer_id, event))
        return True


SLOW, FAST, WAITING = b"S" * 16, b"F" * 16, b"W" * 16


async def _slow_fast_and_waiting(uploads: Uploads) -> list[tuple[bytes, int]]:
    """Two slots: "slow" takes 1 s a piece (3 asked), "fast" 0.1 s (40 asked); "waiting" asks
    after both (0.1 s). The order the pieces went out in, as (peer, index)."""
    uploads.lanes = UploadLanes(slots=2)
    log: list[tuple[bytes, Event]] = []
    slow = TimedLink(SLOW, log=log, seconds=1.0)
    fast = TimedLink(FAST, log=log, seconds=0.1)
    waiting = TimedLink(WAITING, log=log, seconds=0.1)
    async with trio.open_nursery() as nursery:
        asks: list[tuple[Link, Request]] = [(slow, Request(DIGEST, 0)), (fast, Request(DIGEST, 0))]
        asks += [(fast, Request(DIGEST, i)) for i in range(1, 40)]
        asks += [(slow, Request(DIGEST, i)) for i in (1, 2)]
        asks += [(waiting, Request(DIGEST, 0))]
        await _ask_in_turn(nursery, uploads, asks)
        assert uploads.lanes.waiting == [WAITING]
    return [(peer, event.index) for peer, event in log]  # type: ignore[union-attr]


async def test_a_link_far_slower_than_the_others_gives_its_slot_to_a_waiting_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Slow's first piece is not measured (a drained socket buffer takes it at once); after
    its second (a tenth of fast's rate) the waiting link goes before slow's third piece."""
    order = await _slow_fast_and_waiting(_uploads(tmp_path))
    assert order.index((SLOW, 1)) < order.index((WAITING, 0))
    assert order.index((WAITING, 0)) < order.index((SLOW, 2))
    assert len(order) == 44


async def test_under_an_upload_cap_no_link_is_measured_slow(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With --upload-rate the pieces go out spaced by the cap: their times say nothing of the
    link, so the slow link keeps its slot and the waiting one waits its turn."""
    uploads = _uploads(tmp_path)
    uploads._limit = RateLimiter(10**9)  # a cap that never binds here: only its presence
    order = await _slow_fast_and_waiting(uploads)
    assert order.index((SLOW, 2)) < order.index((WAITING, 0))


@dataclass
class Credit:
    """A PeerProtocol stand-in: the push credit the peer gave."""

    may_push: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class PushLink(Link):
    protocol: Credit = field(default_factory=Credit)


async def test_a_push_takes_the_peers_credit_and_goes_out_marked_pushed(tmp_path: Path) -> None:
    counters = Counters()
    sent: list[tuple[bytes, str, int]] = []
    uploads = _uploads(tmp_path, counters=counters, sent=sent)
    link = PushLink(b"A" * 16)
    link.protocol.may_push[DIGEST] = 2
    assert uploads.claim_push(link, DIGEST, 0)  # type: ignore[arg-type]
    assert not uploads.claim_push(link, DIGEST, 0)  # type: ignore[arg-type]  # claimed already
    assert uploads.claim_push(link, DIGEST, 1)  # type: ignore[arg-type]
    assert not uploads.claim_push(link, DIGEST, 2)  # type: ignore[arg-type]  # beyond the credit
    assert uploads.pushing(link.peer_id, DIGEST, 0) and uploads.pushing(link.peer_id, DIGEST, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.push, link, DIGEST, 0)  # type: ignore[arg-type]
        nursery.start_soon(uploads.push, link, DIGEST, 1)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        link.release.set()
    pieces = [e for e in link.sent if isinstance(e, Piece)]
    assert sorted(p.index for p in pieces) == [0, 1] and all(p.pushed for p in pieces)
    assert counters.pieces_pushed == 2 and counters.pieces_to_peers == 2
    assert sorted(sent) == [(link.peer_id, DIGEST, 0), (link.peer_id, DIGEST, 1)]
    assert not uploads.pushing(link.peer_id, DIGEST, 0)
    # The claims are gone with the pushes; the credit itself is the protocol's to spend (the
    # stand-in does not), so there is room again.
    assert uploads.claim_push(link, DIGEST, 2)  # type: ignore[arg-type]


async def test_no_push_on_a_closed_link_or_without_credit(tmp_path: Path) -> None:
    uploads = _uploads(tmp_path)
    link = PushLink(b"A" * 16)
    assert not uploads.claim_push(link, DIGEST, 0)  # type: ignore[arg-type]
    link.protocol.may_push[DIGEST] = 1
    link.closed = True
    assert not uploads.claim_push(link, DIGEST, 0)  # type: ignore[arg-type]


async def test_a_push_whose_peer_was_choked_meanwhile_is_dropped_without_a_word(
    tmp_path: Path,
) -> None:
    # Nobody asked for it: a Reject would answer no request (and break the protocol).
    choker = Choker(random.Random(1), 0.0)
    counters = Counters()
    uploads = _uploads(tmp_path, choker=choker, counters=counters)
    first, second = Link(b"A" * 16), PushLink(b"B" * 16)
    second.protocol.may_push[DIGEST] = 1
    assert uploads.claim_push(second, DIGEST, 5)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploads.serve, first, Request(DIGEST, 0))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(uploads.push, second, DIGEST, 5)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        choker.choked.add(second.peer_id)
        first.release.set()
        second.release.set()
    assert second.sent == [] and counters.pieces_pushed == 0
    assert not uploads.pushing(second.peer_id, DIGEST, 5)
