"""The swarm fetch's handling of the owner's answers, before and after it has a picker (no
links: events are handed in as the read loop would)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from peer.fetch.download import Download
from peer.swarm.bans import BanList
from peer.swarm.bits import bits_of, indices_of
from peer.swarm.digest_state import DigestState
from peer.swarm.fetch import (
    MAX_PEERS,
    MIN_PEERS,
    PEERS_WHILE_OWNING,
    SwarmFetch,
    byte_runs,
    peers_to_link,
    peers_while_owning,
)
from peer.swarm.picker import MOVE_FIRST_AFTER, PiecePicker
from pieces.layout import PieceLayout
from pieces.partial import DiskFull
from pieces.store import Store
from wire.events import Have, Peers, PieceMeta

DIGEST = "sha256:" + "a" * 64
OWNER = b"O" * 16
PEER = b"P" * 16


@dataclass
class Link:
    peer_id: bytes


def _fetch_from_owner() -> SwarmFetch:
    """A fetch whose owner is OWNER, with no swarm behind it: what these tests hand in never
    reaches one (events are handed in as the read loop would)."""
    fetch = SwarmFetch(
        None,  # type: ignore[arg-type]
        DigestState(DIGEST),
        Download(DIGEST, None, "org/app", None),
        {},
    )
    fetch.owner = OWNER
    return fetch


async def test_owner_updates_before_the_first_answer_is_read_are_kept() -> None:
    """PieceMeta updates follow the owner's first answer at once; the fetch reads the first
    answer later. Every hash must be kept (a lost one stalls that piece until a re-Want)."""
    fetch = _fetch_from_owner()
    first = PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, origins=[])
    await fetch.on_event(Link(OWNER), first)  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {1: b"b" * 16}, []))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {2: b"c" * 16}, []))  # type: ignore[arg-type]
    assert fetch._meta is first  # the answer `_want` reads: the first one
    assert fetch.hashes == {0: b"a" * 16, 1: b"b" * 16, 2: b"c" * 16}
    assert fetch._owner_hashes == {0, 1, 2}


async def test_offers_before_the_picker_exists_are_kept() -> None:
    """The owner offers pieces (Have, or a Bitfield once its seeding is over) right after its
    PieceMeta; the picker is made only when `_want` reads that answer. An offer lost there is
    a piece the owner believes offered: it must reach the picker."""
    fetch = _fetch_from_owner()
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, []))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), Have(DIGEST, 0))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), Have(DIGEST, 2))  # type: ignore[arg-type]
    assert fetch._early == {OWNER: {0, 2}}
    # Bounded: not another member's (none has been told of us), not past the blob's pieces.
    fetch.on_bitfield(PEER, indices_of(bits_of([1], 3)))
    await fetch.on_event(Link(OWNER), Have(DIGEST, 3))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), Have(DIGEST, 2**40))  # type: ignore[arg-type]
    assert fetch._early == {OWNER: {0, 2}}
    fetch.on_bitfield(OWNER, indices_of(bits_of([1, 2], 3)))  # a Bitfield replaces what was kept
    assert fetch._early == {OWNER: {1, 2}}


async def test_offers_before_the_owners_answer_are_not_kept() -> None:
    fetch = _fetch_from_owner()
    await fetch.on_event(Link(OWNER), Have(DIGEST, 0))  # type: ignore[arg-type]
    assert fetch._early == {}


async def test_an_offer_of_a_piece_we_hold_is_answered_with_our_have() -> None:
    """The owner did not know we hold it: without an answer its offer would hold one of our
    few offer slots at the owner until it went stale."""

    class Posting:
        peer_id = OWNER
        posted: list[object] = []

        def post_answer(self, event: object) -> None:  # an answer: bounded while unread
            self.posted.append(event)

    class Partial:
        piece_hashes = {1: b"x" * 16}

    fetch = _fetch_from_owner()
    fetch.partial = Partial()  # type: ignore[assignment]
    fetch.picker = PiecePicker(DIGEST, PieceLayout(300, 100), random.Random(1), have=[1])
    link = Posting()
    await fetch.on_event(link, Have(DIGEST, 1))  # type: ignore[arg-type]
    await fetch.on_event(link, Have(DIGEST, 2))  # type: ignore[arg-type]
    assert link.posted == [Have(DIGEST, 1)]


async def test_hashes_of_another_piece_size_are_not_taken() -> None:
    """A new owner whose pieces are cut otherwise: its hashes would fail every piece the
    peers send (and we would ban them)."""

    class Partial:
        layout = PieceLayout(300, 100)
        piece_hashes: dict[int, bytes] = {}

    fetch = _fetch_from_owner()
    fetch.partial = Partial()  # type: ignore[assignment]
    fetch._meta = PieceMeta(DIGEST, 300, 100, {}, [])  # answered already
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 50, {0: b"z" * 16}, []))  # type: ignore[arg-type]
    assert fetch.hashes == {}
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, []))  # type: ignore[arg-type]
    assert fetch.hashes == {0: b"a" * 16}


def test_an_unsent_request_leaves_the_piece_with_its_holder() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(300, 100), random.Random(2))
    picker.hashes([0, 1, 2])
    picker.bitfield(PEER, [0, 1, 2])
    asked = [s.event.index for s in picker.schedule(0.0) if s.peer == PEER]  # type: ignore[union-attr]
    picker.unsent(PEER, asked[0])
    assert asked[0] not in picker.inflight and picker.available(PEER) == {0, 1, 2}
    again = [s.event.index for s in picker.schedule(1.0)]  # type: ignore[union-attr]
    assert asked[0] in again


@dataclass
class _Membership:
    members: int

    def alive_ids(self) -> set[bytes]:
        return {i.to_bytes(16, "big") for i in range(self.members)}


@dataclass
class _PostingLink:
    posted: list[object]

    def post(self, event: object) -> None:
        self.posted.append(event)


class _Swarm:
    """What `_link_peers` uses of the swarm: membership, bans, links."""

    node_id = b"\xff" * 16

    def __init__(self, members: int) -> None:
        self.membership = _Membership(members)
        self.linked: list[bytes] = []
        self.bans = BanList()

    def is_banned(self, peer_id: bytes) -> bool:
        return False

    async def link_to(self, peer_id: bytes) -> _PostingLink:
        self.linked.append(peer_id)
        return _PostingLink([])


@dataclass
class _Partial:
    layout: PieceLayout
    piece_hashes: dict[int, bytes]


def test_peers_to_link_is_half_the_cluster_within_bounds() -> None:
    assert [peers_to_link(n) for n in (1, 8, 16, 17, 50, 64, 65, 1000)] == [
        MIN_PEERS,
        MIN_PEERS,
        8,
        8,
        25,
        32,
        MAX_PEERS,
        MAX_PEERS,
    ]


async def test_a_fetch_links_to_no_more_peers_than_its_cluster_size_allows() -> None:
    # An owner's answer may list up to 32 peers, and answers repeat: the fetch links to
    # `peers_to_link` of them, besides the owner, whatever the answers list.
    for members, expected in ((16, 8), (50, 25), (200, MAX_PEERS)):
        fetch = _fetch_from_owner()
        swarm = _Swarm(members)
        fetch.swarm = swarm  # type: ignore[assignment]
        layout = PieceLayout(8 << 20, 1 << 20)
        fetch.partial = _Partial(layout, {})  # type: ignore[assignment]
        fetch.picker = PiecePicker(DIGEST, layout, random.Random(0))
        fetch.picker.add_peer(OWNER)
        listed = [(bytes([1, i]) + bytes(14), "127.0.0.1", 1000 + i) for i in range(40)]
        for answer in (listed[:32], listed[8:40]):
            await fetch._link_peers(Peers(DIGEST, answer))
        assert len(swarm.linked) == expected
        assert len(fetch.linked) == expected + 1  # and the owner


async def test_only_the_owner_tells_a_fetch_whom_to_link_to() -> None:
    # The owner is the blob's tracker; another member's Peers answer would let it steer our
    # links (and start a linking task per message it sends).
    fetch = _fetch_from_owner()
    swarm = _Swarm(100)
    started: list[object] = []
    swarm.start_soon = lambda fn, *args: started.append(args)  # type: ignore[attr-defined]
    fetch.swarm = swarm  # type: ignore[assignment]
    layout = PieceLayout(8 << 20, 1 << 20)
    fetch.picker = PiecePicker(DIGEST, layout, random.Random(0))
    answer = Peers(DIGEST, [(bytes([1, i]) + bytes(14), "127.0.0.1", 1000 + i) for i in range(4)])
    for _ in range(3):
        await fetch.on_event(Link(PEER), answer)  # type: ignore[arg-type]
    assert started == []
    await fetch.on_event(Link(OWNER), answer)  # type: ignore[arg-type]
    assert started == [((OWNER, answer),)]


class _DiallingSwarm(_Swarm):
    """A swarm whose dials wait until `answer` is set (a peer that takes its time)."""

    def __init__(self, members: int) -> None:
        super().__init__(members)
        self.dialling = 0
        self.answer = trio.Event()

    async def link_to(self, peer_id: bytes) -> _PostingLink:
        self.dialling += 1
        try:
            await self.answer.wait()
        finally:
            self.dialling -= 1
        return await super().link_to(peer_id)


def _fetch_linking_slowly() -> tuple[SwarmFetch, _DiallingSwarm]:
    """A fetch with a picker and a partial, whose dials wait for `swarm.answer`."""
    fetch = _fetch_from_owner()
    layout = PieceLayout(8 << 20, 1 << 20)
    fetch.partial = _Partial(layout, {})  # type: ignore[assignment]
    fetch.picker = PiecePicker(DIGEST, layout, random.Random(0))
    fetch.picker.add_peer(OWNER)
    return fetch, _DiallingSwarm(100)


async def test_an_owner_that_sends_peers_without_end_gets_one_linking_task_at_a_time() -> None:
    # The owner is a member like any other, and may lie: a task per Peers message, each
    # dialling its list (up to the handshake's time-out per peer), let it grow the node's
    # memory without bound (a probe of a real node: 49 to 628 MiB in 55 s). One task links
    # at a time; of the lists that come meanwhile only the latest waits for it.
    fetch, swarm = _fetch_linking_slowly()
    answers = [
        Peers(DIGEST, [(bytes([1, i % 256, i // 256]) + bytes(13), "h", 1)]) for i in range(1000)
    ]
    async with trio.open_nursery() as nursery:
        swarm.start_soon = nursery.start_soon  # type: ignore[attr-defined]
        fetch.swarm = swarm  # type: ignore[assignment]
        for answer in answers:
            await fetch.on_event(Link(OWNER), answer)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert swarm.dialling == 1
        assert len(nursery.child_tasks) == 1
        swarm.answer.set()
    first, last = answers[0].peers[0][0], answers[-1].peers[0][0]
    assert swarm.linked == [first, last]
    # And the next list is taken at once once those are done.
    async with trio.open_nursery() as nursery:
        swarm.start_soon = nursery.start_soon  # type: ignore[attr-defined]
        await fetch.on_event(Link(OWNER), answers[500])  # type: ignore[arg-type]
    assert swarm.linked == [first, last, answers[500].peers[0][0]]


async def test_a_new_owner_stops_the_linking_of_the_last_ones_answer() -> None:
    # One linking task at a time: a lying owner's list of members that never answer (a
    # handshake's time-out each) must not hold the next owner's answer, nor be linked for it.
    fetch, swarm = _fetch_linking_slowly()
    listed = [(bytes([1, i]) + bytes(14), "h", 1) for i in range(4)]
    new_owner = b"N" * 16
    async with trio.open_nursery() as nursery:
        swarm.start_soon = nursery.start_soon  # type: ignore[attr-defined]
        fetch.swarm = swarm  # type: ignore[assignment]
        await fetch.on_event(Link(OWNER), Peers(DIGEST, listed[:2]))  # type: ignore[arg-type]
        await fetch.on_event(Link(OWNER), Peers(DIGEST, listed[1:3]))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert swarm.dialling == 2  # the first answer's two peers; the second answer waits
        fetch._set_owner(new_owner)
        await trio.testing.wait_all_tasks_blocked()
        assert swarm.dialling == 0 and not nursery.child_tasks  # stopped, the waiting dropped
        swarm.answer.set()
        await fetch.on_event(Link(new_owner), Peers(DIGEST, listed[3:]))  # type: ignore[arg-type]
    assert swarm.linked == [listed[3][0]]
    assert fetch.state.wanted_from == new_owner


class _DeadPeerSwarm(_Swarm):
    """A swarm in which `dead` never answers a dial (until the test ends)."""

    def __init__(self, members: int, dead: bytes) -> None:
        super().__init__(members)
        self.dead = dead
        self.dialled: list[bytes] = []

    async def link_to(self, peer_id: bytes) -> _PostingLink:
        self.dialled.append(peer_id)
        if peer_id == self.dead:
            await trio.sleep_forever()
        return await super().link_to(peer_id)


async def test_a_listed_peer_that_never_answers_holds_no_other_link_back() -> None:
    """An owner's answer was dialled one peer at a time: a member listed first that never
    answered held every other link back a handshake's time-out (10 s), and the next answer's
    list started with it again. Now LINK_DIALS_AT_ONCE are dialled at once, and a member
    noted unreachable is not dialled."""
    fetch, _ = _fetch_linking_slowly()
    peers = [bytes([2, i]) + bytes(14) for i in range(5)]
    swarm = _DeadPeerSwarm(100, dead=peers[0])
    noted = peers[4]
    swarm.bans.unreachable(noted, trio.current_time())
    fetch.swarm = swarm  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        swarm.start_soon = nursery.start_soon  # type: ignore[attr-defined]
        answer = Peers(DIGEST, [(peer, "h", 1) for peer in peers])
        await fetch.on_event(Link(OWNER), answer)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(swarm.linked) == peers[1:4]  # not behind the dead one
        assert noted not in swarm.dialled
        nursery.cancel_scope.cancel()
    assert {*peers[1:4], OWNER} <= fetch.linked


async def test_an_overdue_request_nobody_else_can_take_does_not_wake_the_fetch_at_once() -> None:
    """In the endgame a request waiting past its time may go to a second peer. When no other
    peer holds the piece, the schedule asks nothing, and the picker's deadline stays in the
    past: the fetch must not wake for it again at once (its loop spun, a schedule per pass,
    until the piece came), but a while later, as the simulator's driver does."""
    fetch = _fetch_from_owner()
    picker = PiecePicker(DIGEST, PieceLayout(100, 100), random.Random(1))
    fetch.picker = picker
    picker.hashes([0])
    picker.bitfield(OWNER, [0])
    now = trio.current_time()
    assert picker.schedule(now)  # the only piece, asked of its only holder
    later = now + 60.0  # long overdue
    assert not picker.schedule(later)  # no second holder: nothing to ask
    assert fetch._deadline(later + 30, later) > later


def test_the_upstream_is_asked_for_exactly_the_unheld_pieces_bytes() -> None:
    """A new owner asks the upstream for the pieces no peer holds, as byte runs: only the
    bytes still missing (a piece an earlier stream left half written goes on from there),
    neighbours in one run, the short last piece to the end of the blob."""
    layout = PieceLayout(1050, 100)  # pieces 0-9 of 100 bytes, piece 10 of 50
    missing = [(0, 300), (450, 800), (900, 1050)]  # piece 4 half written, 8 held
    assert byte_runs({1, 2, 4, 5, 7, 9, 10}, missing, layout) == [
        (100, 300),
        (450, 600),
        (700, 800),
        (900, 1050),
    ]
    assert byte_runs({3, 8}, missing, layout) == []
    assert byte_runs(set(range(11)), missing, layout) == missing


class DiskFullUpstream:
    """The upstream side of a takeover whose writes fail on our disk."""

    def blobs(self) -> int:
        return 1

    def blobs_wanted_now(self) -> int:
        return 1

    def streams(self) -> int:
        return 1

    def in_flight(self, digest: str) -> Download | None:
        return None

    async def fetch_runs(
        self, download: Download, headers: dict[str, str], partial: object, runs: object
    ) -> None:
        await trio.sleep(0)
        raise DiskFull("no space left on the test's disk")


async def test_a_full_disk_during_a_takeover_ends_the_fetch_with_that_error(
    tmp_path: Path,
) -> None:
    """The upstream's part runs beside the drain in a nursery: its error must come out as
    itself, not in an exception group (the download table discards a partial on DiskFull
    only, and answers 507 for it)."""
    store = Store(tmp_path)
    partial = await store.open_partial(DIGEST, 300, repository=None)
    fetch = SwarmFetch(
        SimpleNamespace(upstream=DiskFullUpstream(), links={}),  # type: ignore[arg-type]
        DigestState(DIGEST),
        Download(DIGEST, None, "org/app", None),
        {},
    )
    fetch.partial = partial
    fetch.picker = PiecePicker(DIGEST, partial.layout, random.Random(1))
    with pytest.raises(DiskFull):
        await fetch._drain_peers(partial)
    store.release_partial(partial)


@dataclass(eq=False)
class PostingLink:
    """A linked peer's link that keeps what is posted to it."""

    peer_id: bytes
    posted: list[object]
    closed: bool = False

    def request_room(self) -> int:
        return 16

    def post_many(self, events: list[object]) -> None:
        self.posted.extend(events)


async def test_a_peer_event_is_scheduled_in_the_read_loop_without_waking_the_fetch(
    tmp_path: Path,
) -> None:
    """As in the simulator: a Have that gives a request is answered at once from the read
    loop; the fetch's task sleeps on. Only what the task alone does wakes it (here: the
    blob is complete, to be verified and committed)."""
    store = Store(tmp_path)
    data = bytes(range(256)) * 2
    partial = await store.open_partial(DIGEST, len(data), piece_size=256, repository=None)
    posted: list[object] = []
    link = PostingLink(PEER, posted)
    swarm = SimpleNamespace(
        upstream=DiskFullUpstream(),
        links={PEER: link},
        inflow_before_requests=lambda peer: None,  # told already
    )
    fetch = SwarmFetch(
        swarm,  # type: ignore[arg-type]
        DigestState(DIGEST),
        Download(DIGEST, None, "org/app", None),
        {},
    )
    fetch.partial = partial
    fetch.picker = PiecePicker(DIGEST, partial.layout, random.Random(1))
    fetch.picker.hashes([0, 1])
    fetch._scheduling = True
    # Its task waits for a change until then: before the picker's own next deadline (the
    # first piece, asked of one peer, may move elsewhere after MOVE_FIRST_AFTER).
    fetch._asleep_until = trio.current_time() + MOVE_FIRST_AFTER / 2
    await fetch.on_event(Link(PEER), Have(DIGEST, 0))  # type: ignore[arg-type]
    assert [type(e).__name__ for e in posted] == ["Request"]
    assert not fetch._changed.is_set()
    partial.write_sync(0, [data])  # both pieces in (as if from peers)
    fetch._changed_by_peer()
    assert fetch._changed.is_set()
    store.release_partial(partial)


class FetchingUpstream:
    """The upstream side of a node that fetches `count` blobs from the registry now, `read`
    of them not ahead of a client here (for peers, or for a client that asked)."""

    def __init__(self, count: int, read: int) -> None:
        self.count = count
        self.read = read

    def blobs(self) -> int:
        return self.count

    def blobs_wanted_now(self) -> int:
        return self.read


@pytest.mark.parametrize(
    ("upstream_blobs", "read", "limit"),
    [
        (0, 0, None),
        (1, 1, PEERS_WHILE_OWNING),
        (2, 2, PEERS_WHILE_OWNING),  # an owner of several: the same
        (5, 5, PEERS_WHILE_OWNING),
        (2, 0, None),  # blobs prefetched ahead of a client here hold nothing back
        (3, 1, PEERS_WHILE_OWNING),
    ],
)
async def test_a_node_fetching_blobs_from_the_registry_takes_pieces_from_fewer_peers(
    upstream_blobs: int, read: int, limit: int | None
) -> None:
    """Each schedule sets the picker's source limit from the blobs the node fetches upstream
    now that are not ahead of a client here: none, else the owner's limit (one blob or
    several); blobs prefetched before their client asked do not count."""
    swarm = SimpleNamespace(upstream=FetchingUpstream(upstream_blobs, read), links={})
    fetch = SwarmFetch(
        swarm,  # type: ignore[arg-type]
        DigestState(DIGEST),
        Download(DIGEST, None, "org/app", None),
        {},
    )
    fetch.picker = PiecePicker(DIGEST, PieceLayout(4096, 256), random.Random(1))
    fetch._schedule()
    assert fetch.picker.source_limit == limit
    assert peers_while_owning(read) == limit


async def test_owner_hashes_outside_the_blob_are_not_kept() -> None:
    """A lying owner's updates may name any index (some 2,000 hashes fit in one frame): only
    the blob's own pieces are kept, or the hash table grows with every update it sends."""
    fetch = _fetch_from_owner()
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, []))  # type: ignore[arg-type]
    for round_ in range(5):
        beyond = {10**12 + round_ * 2000 + i: b"h" * 16 for i in range(2000)}
        await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, beyond, []))  # type: ignore[arg-type]
    # Another size, or another cut, is another layout: its hashes are not this blob's.
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 10**9, 100, {7: b"s" * 16}, []))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 50, {5: b"c" * 16}, []))  # type: ignore[arg-type]
    last = PieceMeta(DIGEST, 300, 100, {2: b"b" * 16, -1: b"n" * 16}, [])
    await fetch.on_event(Link(OWNER), last)  # type: ignore[arg-type]
    assert fetch.hashes == {0: b"a" * 16, 2: b"b" * 16}
    assert fetch._owner_hashes == {0, 2}


async def test_an_owner_cannot_change_a_hash_it_gave() -> None:
    """The bytes of a piece never change, so neither does its hash: a second, different hash
    for a piece is a lie (it would make an honest peer's true bytes fail, and the peer be
    banned). The first stays."""
    fetch = _fetch_from_owner()
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, []))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"z" * 16, 1: b"b" * 16}, []))  # type: ignore[arg-type]
    await fetch.on_event(Link(OWNER), PieceMeta(DIGEST, 300, 100, {0: b"a" * 16}, []))  # type: ignore[arg-type]
    assert fetch.hashes == {0: b"a" * 16, 1: b"b" * 16}
    assert fetch._owner_hashes == {0, 1}


@dataclass(eq=False)
class WantLink:
    """The link to an owner `_want` asks: keeps what is sent and posted to it."""

    peer_id: bytes
    sent: list[object] = field(default_factory=list)
    closed: bool = False

    async def send(self, event: object) -> bool:
        self.sent.append(event)
        return True

    def post(self, event: object) -> None:
        self.sent.append(event)


async def test_a_new_owners_hashes_replace_the_last_owners(tmp_path: Path) -> None:
    """Hashes are one owner's word: a lying owner's false hash, kept once another owner is
    asked, failed every honest peer's true bytes of that piece and got it banned (the new
    owner's own hash was dropped as a change). Only the hashes of pieces stored stay."""
    store = Store(tmp_path)
    partial = await store.open_partial(DIGEST, 300, piece_size=100, repository=None)
    fetch = _fetch_from_owner()
    # The store's largest piece, as this node's (the owner's pieces are not under it).
    fetch.swarm = SimpleNamespace(store=SimpleNamespace(piece_size=100))  # type: ignore[assignment]
    fetch.partial = partial
    fetch.picker = PiecePicker(DIGEST, partial.layout, random.Random(1))
    liar = PieceMeta(DIGEST, 300, 100, {0: b"f" * 16, 1: b"g" * 16}, [])
    await fetch.on_event(Link(OWNER), liar)  # type: ignore[arg-type]
    fetch.picker.hashes([0, 1])
    honest = b"H" * 16
    fetch.owner = honest
    link = WantLink(honest)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch._want, link)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        answer = PieceMeta(DIGEST, 300, 100, {0: b"t" * 16}, [])
        await fetch.on_event(Link(honest), answer)  # type: ignore[arg-type]
    assert fetch.hashes == {0: b"t" * 16}
    assert fetch.picker.hashes_missing()  # piece 1's hash waits for the new owner's word
    assert not fetch.picker.could_ask(OWNER, 1)
    store.release_partial(partial)
