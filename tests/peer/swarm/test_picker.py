"""The piece picker on its own: random event sequences against written-out invariants, and a
few scenarios on fake time. No sockets, no trio, no clock."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from peer.swarm.actions import Send
from peer.swarm.picker import (
    ENDGAME_AFTER,
    IDLE_WAKE,
    MAX_REQUESTS,
    MOVE_FIRST_AFTER,
    QUEUE_SECONDS,
    START_REQUESTS,
    PiecePicker,
)
from pieces.layout import PieceLayout
from wire.events import Cancel, Have, Request

DIGEST = "sha256:" + "ab" * 32
PEERS = [bytes([i]) * 16 for i in range(6)]
PIECES = 12


def requests(sends: list[Send]) -> list[tuple[bytes, int]]:
    return [(s.peer, s.event.index) for s in sends if isinstance(s.event, Request)]


class PickerMachine(RuleBasedStateMachine):
    """Drives a picker with any order of peer and disk events; after each step the rules of
    peer/swarm/picker.py must hold. The model keeps what the peers told us and what we asked."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.picker = PiecePicker(DIGEST, PieceLayout(PIECES * 100, 100), random.Random(7))
        self.announced: dict[bytes, set[int]] = {}
        self.outstanding: dict[bytes, set[int]] = {}  # peer -> pieces asked, not answered
        # peer -> pieces cancelled there, not yet answered: outstanding, as on the wire (a
        # Cancel is a hint; wire/protocol.py refuses a second Request for them meanwhile)
        self.cancelled: dict[bytes, set[int]] = {}
        self.choking: set[bytes] = set()
        self.banned: set[bytes] = set()
        self.linked: set[bytes] = set()
        self.stored: set[int] = set()
        self.hashes: set[int] = set()
        self.arrived: list[tuple[bytes, int]] = []  # wanted pieces being written
        self.elsewhere: set[int] = set()  # the driver fetches these itself (the upstream)
        self.asked_at: dict[tuple[bytes, int], float] = {}

    def _schedule(self) -> list[Send]:
        # As the picker's own: what the driver fetches elsewhere is not wanted from peers.
        wanted = self.picker.missing - {i for _, i in self.arrived} - self.elsewhere
        endgame = all(i in self.picker.inflight for i in wanted)
        sends = self.picker.schedule(self.now)
        moved = [(s.peer, s.event.index) for s in sends if isinstance(s.event, Cancel)]
        for peer, index in moved:
            # Only the first wanted piece moves, before the endgame, from the one peer asked
            # for it long enough ago, to another that is asked for it in the same schedule.
            assert not endgame and index == min(wanted), (index, wanted)
            assert index in self._live(peer)
            assert [p for p in self.outstanding if index in self._live(p)] == [peer]
            assert self.now - self.asked_at[(peer, index)] >= MOVE_FIRST_AFTER
            assert any(q != peer and i == index for q, i in requests(sends))
            self.cancelled[peer].add(index)  # outstanding until the peer answers
        new: dict[bytes, int] = {}
        for peer, index in requests(sends):
            if any(index in self._live(p) for p in self.outstanding):
                # A second request for a piece is made only in the endgame: every wanted
                # piece was in flight (or became so in this very schedule).
                assert endgame or all(i in self.picker.inflight for i in wanted)
            new[peer] = new.get(peer, 0) + 1
            assert peer in self.linked, "asked a peer we have no link to"
            assert peer not in self.banned, "asked a banned peer"
            assert peer not in self.choking, "asked a peer that chokes us"
            assert index in self.announced.get(peer, set()), "asked for a piece not announced"
            assert index in self.hashes, "asked for a piece we cannot verify"
            assert index not in self.stored, "asked for a piece we have"
            assert index not in self.elsewhere, "asked a peer for a piece fetched elsewhere"
            # Also while a cancelled request for it is unanswered: the link would refuse it.
            assert index not in self.outstanding[peer], "asked one peer twice for a piece"
            self.outstanding[peer].add(index)
            self.asked_at[(peer, index)] = self.now
        for peer, count in new.items():
            # A new measure may shrink a queue below what is already out; no request is
            # added to a queue that is full.
            assert count and len(self.outstanding[peer]) <= self.picker.queue_depth(peer)
            assert len(self.outstanding[peer]) <= MAX_REQUESTS, "more than the peer's queue"
        return sends

    def _live(self, peer: bytes) -> set[int]:
        """What `peer` was asked for and not told to drop (a Cancel)."""
        return self.outstanding[peer] - self.cancelled[peer]

    def _answered(self, peer: bytes, index: int) -> None:
        self.outstanding[peer].discard(index)
        self.cancelled[peer].discard(index)

    @rule(peer=st.sampled_from(PEERS))
    def link(self, peer: bytes) -> None:
        if peer in self.banned or peer in self.linked:
            return
        self.linked.add(peer)
        self.outstanding[peer] = set()
        self.cancelled[peer] = set()
        self.picker.add_peer(peer)
        self._schedule()

    @rule(peer=st.sampled_from(PEERS), pieces=st.sets(st.integers(0, PIECES - 1)))
    def bitfield(self, peer: bytes, pieces: set[int]) -> None:
        if peer not in self.linked:
            return
        self.announced[peer] = set(pieces)
        self.picker.bitfield(peer, pieces)
        self._schedule()

    @rule(peer=st.sampled_from(PEERS), index=st.integers(0, PIECES - 1))
    def have(self, peer: bytes, index: int) -> None:
        if peer not in self.linked:
            return
        self.announced.setdefault(peer, set()).add(index)
        self.picker.have(peer, index)
        could_ask = self.picker.could_ask(peer, index)
        before = {p: self._live(p) for p in self.outstanding}
        wake = self.picker.wake_at(self.now)
        sends = self._schedule()
        if not could_ask and requests(sends):
            # The driver skips this schedule (the picker was scheduled after every other
            # event). It may only have asked second copies in the endgame (a schedule can
            # enter the endgame part-way through its peers), or moved the first piece, which
            # the picker's wake-up asks for in any case.
            assert wake is not None and wake <= self.now + IDLE_WAKE
            if not any(isinstance(s.event, Cancel) for s in sends):
                for p, asked in self.outstanding.items():
                    for i in asked - before.get(p, set()):
                        assert any(i in a for q, a in before.items() if q != p), (p, i)

    @rule(pieces=st.sets(st.integers(0, PIECES - 1), min_size=1))
    def meta(self, pieces: set[int]) -> None:
        self.hashes |= pieces
        self.picker.hashes(pieces)
        self._schedule()

    @rule(peer=st.sampled_from(PEERS), choking=st.booleans())
    def choke(self, peer: bytes, choking: bool) -> None:
        if peer not in self.linked:
            return
        (self.choking.add if choking else self.choking.discard)(peer)
        self.picker.choke(peer, choking)
        self._schedule()

    @rule(seconds=st.floats(0.1, 20.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._schedule()

    @precondition(lambda self: any(self.outstanding.values()))
    @rule(data=st.data(), good=st.booleans())
    def piece_arrives(self, data: st.DataObject, good: bool) -> None:
        peer = data.draw(st.sampled_from(sorted(p for p, a in self.outstanding.items() if a)))
        index = data.draw(st.sampled_from(sorted(self.outstanding[peer])))
        self._answered(peer, index)  # a cancelled request's piece may come all the same
        self.now += 0.5
        if not self.picker.received(peer, index, self.now):
            return
        if good:
            self.arrived.append((peer, index))
        else:
            self.picker.bad_piece(peer, index)
            self._drop(peer, banned=True)
        self._schedule()

    @precondition(lambda self: bool(self.arrived))
    @rule(ok=st.booleans())
    def written(self, ok: bool) -> None:
        _peer, index = self.arrived.pop(0)
        if ok:
            sends = self.picker.stored(index)
            self.stored.add(index)
            cancelled = {s.peer for s in sends if isinstance(s.event, Cancel)}
            assert cancelled == {p for p in self.outstanding if index in self._live(p)}
            for p in cancelled:
                self.cancelled[p].add(index)
            # Told: every linked peer that has not announced the piece (no owner here).
            told = {p for p in self.linked if index not in self.announced.get(p, set())}
            assert {s.peer for s in sends if isinstance(s.event, Have)} == told
        else:
            self.picker.store_failed(index)
        self._schedule()

    @rule()
    def unheld_fetched_elsewhere(self) -> None:
        """A new owner's drain: what no peer can give goes to the upstream."""
        unheld = self.picker.unobtainable()
        for index in unheld:
            assert not any(index in a for a in self.outstanding.values())
            assert index not in self.stored and index not in {i for _, i in self.arrived}
            holders = {p for p in self.linked if index in self.announced.get(p, set())}
            assert index not in self.hashes or not holders, "a peer could give it"
        taken = self.picker.elsewhere(unheld)
        assert taken == unheld
        self.elsewhere |= taken
        assert not self.picker.unobtainable() & self.elsewhere
        self._schedule()

    @precondition(lambda self: bool(self.elsewhere))
    @rule(data=st.data())
    def elsewhere_stored(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.elsewhere)))
        self.elsewhere.discard(index)
        self.picker.stored(index)
        self.stored.add(index)
        self._schedule()

    @precondition(lambda self: any(self.outstanding.values()))
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(p for p, a in self.outstanding.items() if a)))
        index = data.draw(st.sampled_from(sorted(self.outstanding[peer])))
        if index not in self.cancelled[peer]:
            # It no longer has it (or it is private): the answer to a Cancel says nothing so.
            self.announced.get(peer, set()).discard(index)
        self._answered(peer, index)
        self.picker.rejected(peer, index)
        self._schedule()

    @rule(peer=st.sampled_from(PEERS))
    def link_lost(self, peer: bytes) -> None:
        if peer in self.linked:
            self.picker.lost(peer)
            self._drop(peer, banned=False)
            self._schedule()

    def _drop(self, peer: bytes, banned: bool) -> None:
        self.linked.discard(peer)
        self.outstanding.pop(peer, None)
        self.cancelled.pop(peer, None)
        self.announced.pop(peer, None)
        self.choking.discard(peer)
        if banned:
            self.banned.add(peer)

    @invariant()
    def one_request_per_piece_outside_the_endgame(self) -> None:
        wanted = self.picker.missing - {i for _, i in self.arrived}
        askers: dict[int, int] = {}
        for peer in self.outstanding:
            for index in self._live(peer):
                askers[index] = askers.get(index, 0) + 1
        for index, count in askers.items():
            assert count <= 2, f"piece {index} asked of {count} peers"
        # (A piece asked of two peers in the endgame may stay so after a lost link frees
        # another piece: `_schedule` checks that the second request was made in the endgame.)
        # (And a stored piece's other requests are cancelled: `written` checks the Cancels; they
        # are outstanding until the peer answers.)
        assert set(askers) <= wanted | {i for _, i in self.arrived} | self.stored

    @invariant()
    def every_obtainable_piece_is_asked_of_someone(self) -> None:
        """A wanted, verifiable piece that an unchoking peer with free slots holds is in
        flight: the picker never sits idle on work it could give out."""
        wanted = self.picker.missing - {i for _, i in self.arrived}
        for index in wanted:
            if index in self.picker.inflight or index not in self.hashes:
                continue
            if index in self.elsewhere:
                continue
            for peer in self.linked - self.choking:
                if index in self.cancelled[peer]:
                    continue  # moved away from it: not asked again before it answers
                if index in self.announced.get(peer, set()):
                    free = self.picker.queue_depth(peer) - len(self.outstanding[peer])
                    assert free <= 0, f"piece {index} held by idle peer, not asked"

    @invariant()
    def model_and_picker_agree(self) -> None:
        for peer in self.linked:
            assert self.picker.requests_at(peer) == len(self.outstanding[peer])
        assert self.picker.missing == set(range(PIECES)) - self.stored


TestPicker = PickerMachine.TestCase
TestPicker.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_first_pieces_are_random_then_rarest_first() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(64 * 10, 10), random.Random(1))
    picker.hashes(range(64))
    common, rare = PEERS[0], PEERS[1]
    picker.bitfield(common, range(64))
    picker.bitfield(rare, range(64))
    picker.bitfield(PEERS[2], range(32))  # pieces 32..63 are rarer
    for index in range(4):  # past the random start
        picker.received(common, index, 0.0)
        picker.stored(index)
    picker.lost(common)
    asked = [i for _, i in requests(picker.schedule(0.0)) if _ == rare]
    # The window (the 16 after the first missing) first, then the rarest.
    assert set(asked) <= set(range(4, 20))


def test_endgame_asks_a_second_peer_only_when_the_first_is_overdue() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(100, 100), random.Random(1))
    picker.hashes([0])
    slow, fast = PEERS[0], PEERS[1]
    picker.bitfield(slow, [0])
    assert requests(picker.schedule(0.0)) == [(slow, 0)]
    picker.bitfield(fast, [0])
    assert requests(picker.schedule(1.0)) == []  # not overdue yet
    deadline = picker.next_deadline()
    assert deadline is not None and deadline >= ENDGAME_AFTER
    assert requests(picker.schedule(deadline + 0.01)) == [(fast, 0)]
    assert picker.received(fast, 0, deadline + 1)
    sends = picker.stored(0)
    assert Send(slow, Cancel(DIGEST, 0)) in sends
    assert not picker.received(slow, 0, deadline + 2)  # the loser's copy is waste
    assert picker.done


def test_a_lost_peers_requests_go_to_another() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(300, 100), random.Random(3))
    picker.hashes(range(3))
    a, b = PEERS[0], PEERS[1]
    picker.bitfield(a, range(3))
    assert {i for p, i in requests(picker.schedule(0.0)) if p == a} == {0, 1, 2}
    picker.bitfield(b, range(3))
    assert requests(picker.schedule(0.1)) == []  # all in flight at a, not overdue
    picker.lost(a)
    assert {i for p, i in requests(picker.schedule(0.2)) if p == b} == {0, 1, 2}


def test_requests_lost_on_one_of_two_links_are_asked_again_and_the_peer_stays() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(300, 100), random.Random(3))
    picker.hashes(range(3))
    a = PEERS[0]
    picker.bitfield(a, range(3))
    assert {i for p, i in requests(picker.schedule(0.0)) if p == a} == {0, 1, 2}
    assert requests(picker.schedule(0.1)) == []  # all in flight
    picker.requests_lost(a)
    assert picker.inflight == {} and picker.available(a) == {0, 1, 2}
    assert {i for p, i in requests(picker.schedule(0.2)) if p == a} == {0, 1, 2}


def test_queue_follows_the_measured_rate() -> None:
    piece = 1 << 20
    picker = PiecePicker(DIGEST, PieceLayout(64 * piece, piece), random.Random(5))
    picker.hashes(range(64))
    peer = PEERS[0]
    picker.bitfield(peer, range(64))
    first = requests(picker.schedule(0.0))
    assert len(first) == START_REQUESTS
    # Four pieces delivered in 0.08 s: a fast peer, more than MAX_REQUESTS pieces of 1 MiB in
    # QUEUE_SECONDS of its measured rate.
    for n, (_, index) in enumerate(first):
        assert picker.received(peer, index, 0.02 * (n + 1))
        picker.stored(index)
    rate = picker.rate(peer)
    assert rate is not None and rate * QUEUE_SECONDS / piece > MAX_REQUESTS
    assert picker.queue_depth(peer) == MAX_REQUESTS
    assert len(requests(picker.schedule(0.5))) == MAX_REQUESTS


def test_source_limit_keeps_new_peers_waiting() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(1000, 10), random.Random(2), source_limit=2)
    picker.hashes(range(100))
    for peer in PEERS[:4]:
        picker.bitfield(peer, range(100))
    asked = {p for p, _ in requests(picker.schedule(0.0))}
    assert len(asked) == 2


def test_same_seed_same_requests() -> None:
    def run(seed: int) -> list[tuple[bytes, int]]:
        picker = PiecePicker(DIGEST, PieceLayout(5000, 10), random.Random(seed))
        picker.hashes(range(500))
        for n, peer in enumerate(PEERS):
            picker.bitfield(peer, range(n * 50, 500))
        return requests(picker.schedule(0.0))

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_a_stored_piece_is_announced_to_peers_without_it_and_always_to_the_owner() -> None:
    """A peer that announced the piece never asks us for it: no Have (most of the Haves late
    in a piece's spread). The owner holds every piece, yet it is told: its first copies go
    to the peers it has not seen holding a piece."""
    picker = PiecePicker(DIGEST, PieceLayout(300, 100), random.Random(5))
    picker.hashes(range(3))
    owner, holder, lacking = PEERS[0], PEERS[1], PEERS[2]
    picker.bitfield(owner, range(3))
    picker.bitfield(holder, [1])
    picker.bitfield(lacking, [2])
    assert (owner, 1) in requests(picker.schedule(0.0))
    assert picker.received(owner, 1, 0.5)
    haves = {s.peer for s in picker.stored(1, owner=owner) if isinstance(s.event, Have)}
    assert haves == {owner, lacking}


def test_pieces_fetched_elsewhere_are_never_asked_of_peers() -> None:
    """A new owner's drain: the pieces no peer holds go to the upstream at once. A peer that
    announces one later is not asked for it (two writers of one piece), and once nothing a
    peer holds is left the drain may end."""
    picker = PiecePicker(DIGEST, PieceLayout(600, 100), random.Random(3))
    picker.hashes(range(5))  # piece 5's hash is unknown: no peer's copy could be checked
    picker.bitfield(PEERS[0], [0, 1, 5])
    assert picker.unobtainable() == {2, 3, 4, 5}
    assert picker.elsewhere(picker.unobtainable()) == {2, 3, 4, 5}
    picker.have(PEERS[1], 3)
    assert sorted(i for _, i in requests(picker.schedule(0.0))) == [0, 1]
    assert not picker.could_ask(PEERS[1], 3)
    assert not picker.received(PEERS[1], 3, 0.5)  # never asked: not taken
    for index in (0, 1):
        assert picker.received(PEERS[0], index, 0.5)
        picker.stored(index)
    assert not picker.obtainable()
    assert picker.missing == {2, 3, 4, 5}


def test_a_request_falling_due_is_looked_at_even_while_another_is_long_overdue() -> None:
    """Piece 0 is overdue at a peer and no other holds it (nothing to do but wait a while);
    piece 1, asked later of another peer, falls due in between: the driver must look again
    just after that, not only IDLE_WAKE later."""
    picker = PiecePicker(DIGEST, PieceLayout(200, 100), random.Random(1))
    picker.hashes(range(2))
    a, b, c = PEERS[0], PEERS[1], PEERS[2]
    picker.bitfield(a, [0])
    assert requests(picker.schedule(0.0)) == [(a, 0)]
    picker.bitfield(b, [1])
    picker.bitfield(c, [1])
    asked = requests(picker.schedule(0.5))
    assert [i for _, i in asked] == [1]
    now = ENDGAME_AFTER + 0.1  # piece 0 overdue (no second holder); piece 1 due at 2.5 s
    assert requests(picker.schedule(now)) == []
    wake = picker.wake_at(now)
    assert wake is not None and wake < now + IDLE_WAKE
    assert abs(wake - (0.5 + ENDGAME_AFTER)) < 0.01
    assert [i for _, i in requests(picker.schedule(wake))] == [1]  # asked of the other peer


def test_the_first_missing_piece_is_moved_from_a_peer_that_does_not_send_it() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(400, 100), random.Random(1))
    picker.hashes(range(4))
    slow, fast = PEERS[0], PEERS[1]
    picker.bitfield(slow, [0, 1])
    assert sorted(requests(picker.schedule(0.0))) == [(slow, 0), (slow, 1)]
    picker.bitfield(fast, [0, 1])  # it holds both but has nothing of ours to send
    assert requests(picker.schedule(1.0)) == []  # piece 2 and 3: nobody holds them
    deadline = picker.next_deadline()  # not the endgame: pieces 2 and 3 are asked of nobody
    assert deadline is not None and deadline >= MOVE_FIRST_AFTER
    assert picker.schedule(deadline - 0.01) == []  # not overdue yet
    sends = picker.schedule(deadline + 0.01)
    # Only the first missing piece moves (the one an in-order reader waits on): piece 1 stays.
    assert sends == [Send(slow, Cancel(DIGEST, 0)), Send(fast, Request(DIGEST, 0))]
    assert picker.inflight == {0: frozenset({fast}), 1: frozenset({slow})}
    assert picker.requests_at(slow) == 2  # the cancelled request holds its place until answered
    # The slow peer's copy, if it was already on its way, is taken; the other is then waste.
    assert picker.received(slow, 0, deadline + 0.5)
    assert Send(fast, Cancel(DIGEST, 0)) in picker.stored(0)
    assert not picker.received(fast, 0, deadline + 1)
    # Piece 1 is now the first missing one, asked of the slow peer long ago: it moves too.
    assert picker.schedule(deadline + 1.0) == [
        Send(slow, Cancel(DIGEST, 1)),
        Send(fast, Request(DIGEST, 1)),
    ]


def test_in_the_endgame_the_first_piece_is_not_moved_but_asked_twice() -> None:
    picker = PiecePicker(DIGEST, PieceLayout(200, 100), random.Random(1))
    picker.hashes(range(2))
    slow, fast = PEERS[0], PEERS[1]
    picker.bitfield(slow, [0, 1])
    assert sorted(requests(picker.schedule(0.0))) == [(slow, 0), (slow, 1)]
    picker.bitfield(fast, [0, 1])
    sends = picker.schedule(MOVE_FIRST_AFTER + 1)
    assert not any(isinstance(s.event, Cancel) for s in sends)
    assert sorted(requests(sends)) == [(fast, 0), (fast, 1)]


def _piece_0_moved(pieces: int) -> tuple[PiecePicker, float]:
    """Piece 0 asked of PEERS[0], held by nobody else until PEERS[1] announces it, then moved
    there (the other pieces held by nobody: not the endgame). Returns when it moved."""
    picker = PiecePicker(DIGEST, PieceLayout(pieces * 100, 100), random.Random(1))
    picker.hashes(range(pieces))
    slow, fast = PEERS[0], PEERS[1]
    picker.bitfield(slow, [0])
    assert requests(picker.schedule(0.0)) == [(slow, 0)]
    picker.bitfield(fast, [0])
    deadline = picker.next_deadline()
    assert deadline is not None
    moved = deadline + 0.01
    assert requests(picker.schedule(moved)) == [(fast, 0)]
    return picker, moved


def test_a_moved_piece_is_not_asked_again_of_its_first_peer_before_that_peer_answers() -> None:
    """The Cancel is a hint: the request stays outstanding on the link until the peer sends
    the piece or a Reject, and the link refuses a second Request for it meanwhile."""
    picker, deadline = _piece_0_moved(pieces=4)
    slow, fast, third = PEERS[0], PEERS[1], PEERS[2]
    # The new peer no longer has it: the piece is free, but its first peer has not answered.
    picker.rejected(fast, 0)
    assert picker.schedule(deadline + 0.1) == []
    # Not even when the second peer is late in turn: the piece moves on, never back.
    picker.bitfield(third, [0])
    picker.bitfield(fast, [0])
    assert requests(picker.schedule(deadline + 0.2)) in ([(fast, 0)], [(third, 0)])
    later = picker.next_deadline()
    assert later is not None
    assert all(p != slow for p, _ in requests(picker.schedule(later + 0.01)))
    # Its answer to the Cancel: it still holds the piece, and may be asked for it again.
    picker.rejected(slow, 0)
    assert picker.holders(0) == 3
    for peer in (fast, third):
        picker.lost(peer)
    assert requests(picker.schedule(later + 0.1)) == [(slow, 0)]


def test_the_endgame_does_not_ask_a_second_copy_of_a_peer_a_piece_moved_away_from() -> None:
    picker, deadline = _piece_0_moved(pieces=2)
    slow, third = PEERS[0], PEERS[2]  # piece 0 moved from slow to PEERS[1]
    picker.bitfield(third, [1])
    assert requests(picker.schedule(deadline + 0.02)) == [(third, 1)]  # now the endgame
    overdue = picker.next_deadline()
    assert overdue is not None
    # Piece 0 is overdue at the fast peer; the only other holder has not answered the Cancel.
    assert requests(picker.schedule(overdue + 0.01)) == []
    picker.rejected(slow, 0)
    assert requests(picker.schedule(overdue + 0.02)) == [(slow, 0)]  # now a second copy
