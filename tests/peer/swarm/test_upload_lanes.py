"""Upload slots held by links (peer/swarm/upload_lanes.py), as a pure state machine."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.swarm.upload_lanes import OVERTAKES, PASSED_OVER, TURN_PIECES, UploadLanes


def test_a_link_keeps_its_slot_while_it_has_requests() -> None:
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    assert lanes.add("b", 2) == []  # waits for a slot
    assert lanes.add("a", 3) == []  # waits behind 1 on its link, but needs no second slot
    assert lanes.serving == ["a"] and lanes.waiting == ["b"]
    assert lanes.finished("a", 1) == [3]
    assert lanes.finished("a", 3) == [2]  # "a" ran dry: the slot moves on
    assert lanes.serving == ["b"] and lanes.waiting == []
    assert lanes.finished("b", 2) == []
    assert lanes.serving == []


def test_urgent_requests_go_first_on_a_link_and_among_the_waiting_links() -> None:
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    lanes.add("a", 2)
    lanes.add("a", 3, urgent=True)
    lanes.add("b", 4)
    lanes.add("c", 5, urgent=True)
    assert lanes.finished("a", 1) == [3]
    assert lanes.finished("a", 3) == [2]
    assert lanes.finished("a", 2) == [5]  # "c" waited with an urgent request: ahead of "b"
    assert lanes.finished("c", 5) == [4]


def test_on_a_link_the_piece_stored_here_last_goes_first() -> None:
    # The newest piece here is the rarest in the swarm: it does not wait behind older ones.
    # Urgent (first copies) still come first; pieces stored long ago (None) in arrival order.
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    lanes.add("a", 2)
    lanes.add("a", 3, stored=10.0)
    lanes.add("a", 4, stored=12.5)
    lanes.add("a", 5)
    lanes.add("a", 6, urgent=True)
    lanes.add("a", 7, urgent=True, stored=11.0)
    order: list[Hashable] = []
    sending: Hashable = 1
    for _ in range(7):
        turns = lanes.finished("a", sending)
        if not turns:
            break
        sending = turns[0]
        order.append(sending)
    assert order == [7, 6, 4, 3, 2, 5]


def test_a_request_is_overtaken_by_newer_pieces_only_so_many_times_in_a_row() -> None:
    # The requester keeps asking for the pieces this node stored last: the oldest request
    # (an in-order client's next piece, say) goes after OVERTAKES of them, not never.
    lanes = UploadLanes(slots=1)
    old, first = object(), object()
    assert lanes.add("a", first) == [first]
    lanes.add("a", old)
    sending: Hashable = first
    order: list[Hashable] = []
    for n in range(OVERTAKES + 2):
        lanes.add("a", n, stored=float(n))  # each new one newer than all before
        sending = lanes.finished("a", sending)[0]
        order.append(sending)
    assert order[:OVERTAKES] == list(range(OVERTAKES))
    assert order[OVERTAKES] is old


def test_a_link_with_requests_always_queued_lets_the_waiting_links_in() -> None:
    """A peer that keeps a request queued held its slot for ever: now a turn is TURN_PIECES
    pieces while others wait, and then the waiting link goes first."""
    lanes = UploadLanes(slots=1)
    assert lanes.add("hog", 0) == [0]
    lanes.add("hog", 1)
    assert lanes.add("other", -1) == []
    sent = [0]
    for piece in range(1, 3 * TURN_PIECES):
        turns = lanes.finished("hog", sent[-1])
        lanes.add("hog", piece + 1)  # always one more queued
        if turns == [-1]:
            break
        assert turns == [piece]
        sent.append(piece)
    assert len(sent) == TURN_PIECES and lanes.serving == ["other"]
    assert lanes.finished("other", -1) == [TURN_PIECES]  # then the hog again


def _a_sends_1_then_2_b_waits_with_3() -> UploadLanes:
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    assert lanes.add("a", 2) == lanes.add("b", 3) == []
    return lanes


def test_a_withdrawn_request_is_gone_whatever_its_ticket() -> None:
    lanes = UploadLanes(slots=1)
    first, kept, withdrawn = object(), object(), object()
    assert lanes.add("a", first) == [first]
    lanes.add("a", withdrawn, stored=2.0)
    lanes.add("a", kept, stored=1.0)
    assert lanes.withdraw("a", withdrawn) == []
    assert lanes.queued("a") == 1
    assert lanes.finished("a", first) == [kept]


def test_a_withdrawn_request_leaves_its_place() -> None:
    lanes = _a_sends_1_then_2_b_waits_with_3()
    assert lanes.withdraw("a", 2) == []
    assert lanes.withdraw("b", 3) == []  # "b" no longer waits
    assert lanes.waiting == []
    assert lanes.withdraw("a", 1) == []  # the sending one: like finished, and "a" is dry
    assert lanes.serving == []
    assert lanes.add("b", 4) == [4]


def test_a_dropped_link_passes_its_slot_on() -> None:
    lanes = _a_sends_1_then_2_b_waits_with_3()
    assert lanes.drop("a") == [3]
    assert lanes.drop("a") == []
    with pytest.raises(ValueError):
        lanes.finished("a", 1)


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(1, 4),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "urgent", "stored", "finish", "withdraw", "drop"]),
            st.integers(0, 5),
            st.sampled_from([None, 0.0, 1.0, 1e3, 1e12]),  # the rate a finished piece went at
        ),
        max_size=80,
    ),
)
def test_slots_turns_and_order_hold_whatever_happens(
    slots: int, ops: list[tuple[str, int, float | None]]
) -> None:
    """At most `slots` links served, one piece at a time per link, no ticket given twice, a
    link waits only while every slot is held, and every request gets its turn in the end
    (a link's requests in order: urgent ones first, then the piece stored here last, then by
    arrival; or, overtaken too often, the oldest of the best one's urgency)."""
    lanes = UploadLanes(slots)
    turns: dict[Hashable, int] = {}  # ticket -> peer, for every ticket whose turn came
    # peer -> (rank, ticket) not yet turned
    pending: dict[int, list[tuple[tuple[int, float, int], str]]] = {}
    gone: set[Hashable] = set()
    sending: dict[int, Hashable] = {}
    ticket = 0

    def take(new: list[Hashable]) -> None:
        for t in new:
            assert t not in turns and t not in gone
            peer = next(p for p, queue in pending.items() if any(x[1] == t for x in queue))
            assert peer not in sending  # one piece at a time on a link
            best = min(pending[peer])
            oldest = min((x for x in pending[peer] if x[0][0] == best[0][0]), key=lambda x: x[0][2])
            assert t in (best[1], oldest[1])  # the link's best waiting request, or its oldest
            pending[peer].remove(best if best[1] == t else oldest)
            turns[t] = peer
            sending[peer] = t
        assert len(lanes.serving) <= slots
        assert not lanes.waiting or len(lanes.serving) == slots

    for op, peer, rate in ops:
        if op in ("add", "urgent", "stored"):
            ticket += 1
            stored = float(ticket % 7) if op == "stored" else None  # (not in arrival order)
            newest_first = -stored if stored is not None else float("inf")
            rank = (0 if op == "urgent" else 1, newest_first, ticket)
            name = f"t{ticket}"  # (not its arrival number: tickets are any hashable)
            pending.setdefault(peer, []).append((rank, name))
            take(lanes.add(peer, name, urgent=op == "urgent", stored=stored))
        elif op == "finish" and peer in sending:
            take(lanes.finished(peer, sending.pop(peer), rate))
        elif op == "withdraw" and pending.get(peer):
            rank_ticket = pending[peer].pop()
            gone.add(rank_ticket[1])
            take(lanes.withdraw(peer, rank_ticket[1]))
        elif op == "drop":
            gone.update(t for _, t in pending.pop(peer, []))
            sending.pop(peer, None)
            take(lanes.drop(peer))
    for _ in range(ticket + 1):  # finish everything: every waiting request gets its turn
        if not sending:
            break
        peer = next(iter(sending))
        take(lanes.finished(peer, sending.pop(peer)))
    assert not any(pending.values())
    assert lanes.serving == [] and lanes.waiting == []


def _two_busy_lanes_and_one_waiting(
    slow_rate: float | None,
) -> tuple[UploadLanes, list[Hashable]]:
    """Slots 2: "fast" and "slow" send, with requests queued behind; "c" waits. Each has sent
    two pieces (the first of a turn is never counted): "fast" at 10 kB/s, "slow" at
    `slow_rate`. Returns the lanes and the turns given at slow's second piece."""
    lanes = UploadLanes(slots=2)
    assert lanes.add("fast", "f1") == ["f1"]
    assert lanes.add("slow", "s1") == ["s1"]
    for name in ("f2", "f3"):
        lanes.add("fast", name)
    for name in ("s2", "s3"):
        lanes.add("slow", name)
    assert lanes.add("c", "c1") == []
    assert lanes.finished("fast", "f1", rate=10_000.0) == ["f2"]
    assert lanes.finished("fast", "f2", rate=10_000.0) == ["f3"]
    # Its first piece is not measured, however slow: it keeps its slot.
    assert lanes.finished("slow", "s1", rate=slow_rate) == ["s2"]
    return lanes, lanes.finished("slow", "s2", rate=slow_rate)


def test_a_lane_far_slower_than_the_fastest_gives_its_slot_to_a_waiting_link() -> None:
    # Under YIELD_BELOW of the fastest lane's rate: its receiver holds it back, not us.
    lanes, turns = _two_busy_lanes_and_one_waiting(1_000.0)
    assert turns == ["c1"]
    assert lanes.serving == ["fast", "c"] and lanes.waiting == ["slow"]
    assert lanes.queued("slow") == 1  # its request still waits, for its next turn
    assert lanes.finished("c", "c1", rate=9_000.0) == ["s3"]  # "c" ran dry: "slow" again
    # Its new turn starts unmeasured: the first piece of it does not count, slow or not.
    lanes.add("slow", "s4")
    lanes.add("d", "d1")
    assert lanes.finished("slow", "s3", rate=1_000.0) == ["s4"]
    assert lanes.waiting == ["d"]


@pytest.mark.parametrize(
    "slow_rate", [6_000.0, None], ids=["near-the-fastest", "refused-not-measured"]
)
def test_a_lane_keeps_its_slot_unless_it_is_measured_far_slower(slow_rate: float | None) -> None:
    lanes, turns = _two_busy_lanes_and_one_waiting(slow_rate)
    assert turns == ["s3"]
    assert lanes.waiting == ["c"]


def test_a_slow_lane_keeps_its_slot_when_no_link_waits() -> None:
    lanes = UploadLanes(slots=2)
    lanes.add("fast", "f1")
    lanes.add("fast", "f2")
    for name in ("s1", "s2", "s3"):
        lanes.add("slow", name)
    lanes.finished("fast", "f1", rate=10_000.0)
    lanes.finished("fast", "f2", rate=10_000.0)
    lanes.finished("slow", "s1", rate=10.0)
    assert lanes.finished("slow", "s2", rate=10.0) == ["s3"]  # nobody to give the slot to


def test_a_peer_whose_fast_rate_goes_stale_starves_nobody() -> None:
    """An attacker's peer reads two pieces fast (1 GB/s), then stalls its third for good:
    its stale rate makes every honest lane look slow. Honest lanes then end their turns after
    each measured piece, but no slot stands idle while a link waits, the attacker holds one
    slot only, and every honest request gets its turn."""
    lanes = UploadLanes(slots=3)
    for name in ("h1", "h2", "h3"):
        lanes.add("hostile", name)
    assert lanes.finished("hostile", "h1", rate=1e9) == ["h2"]
    assert lanes.finished("hostile", "h2", rate=1e9) == ["h3"]  # h3 now stalls for good
    honest = ["a", "b", "c", "d"]
    sending: dict[str, Hashable] = {}
    asked = 0
    for peer in honest:
        for i in range(10):
            asked += 1
            for ticket in lanes.add(peer, f"{peer}{i}"):
                sending[str(ticket)[0]] = ticket
    served = 0
    for _ in range(200):
        if not sending:
            break
        peer, ticket = next(iter(sending.items()))
        del sending[peer]
        served += 1
        for turn in lanes.finished(peer, ticket, rate=1e6):
            sending[str(turn)[0]] = turn
        assert lanes.serving.count("hostile") == 1
        assert not lanes.waiting or len(lanes.serving) == 3  # no slot idle while a link waits
    assert served == asked  # every honest request went out
    assert lanes.serving == ["hostile"] and lanes.waiting == []


def test_a_free_slot_goes_to_the_waiting_link_whose_receiver_takes_in_the_least() -> None:
    """One more flow into a downlink that takes pieces from many peers adds little; into one
    that takes from few, what it lacks. Urgent requests still go first; equal counts in the
    order the links began to wait; a peer that said nothing after those that did (every node
    says its number before its first requests: silence is no claim of an empty downlink)."""
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    for waiter, ticket, inflows in [("b", 2, 7), ("c", 3, 2), ("d", 4, 5), ("e", 5, 2)]:
        lanes.report(waiter, inflows)
        assert lanes.add(waiter, ticket) == []
    lanes.add("f", 6)  # said nothing
    lanes.report("d", 0)  # said again: it lost its senders
    order: list[Hashable] = []
    sending: Hashable = 1
    peer: Hashable = "a"
    for _ in range(6):
        turns = lanes.finished(peer, sending)
        if not turns:
            break
        sending = turns[0]
        peer = lanes.serving[0]
        order.append(peer)
    assert order == ["d", "c", "e", "b", "f"]


def test_an_urgent_request_goes_before_a_receiver_that_takes_in_less() -> None:
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    lanes.report("b", 0)
    lanes.add("b", 2)
    lanes.report("c", 9)
    lanes.add("c", 3, urgent=True)
    assert lanes.finished("a", 1) == [3]


def test_a_link_passed_over_too_often_gets_the_next_slot_whatever_its_receiver_says() -> None:
    """A count that never falls (a peer that stopped saying, or lies) delays its link, it does
    not starve it."""
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 0) == [0]
    lanes.report("busy", 50)
    lanes.add("busy", "x")
    granted = []
    sending: Hashable = 0
    peer: Hashable = "a"
    for n in range(PASSED_OVER + 2):
        fresh = f"p{n}"
        lanes.report(fresh, 1)
        lanes.add(fresh, n + 1)
        turns = lanes.finished(peer, sending)
        sending = turns[0]
        peer = lanes.serving[0]
        granted.append(peer)
    assert granted.index("busy") == PASSED_OVER


def test_what_a_peer_said_is_forgotten_with_it() -> None:
    lanes = UploadLanes(slots=1)
    assert lanes.add("a", 1) == [1]
    lanes.report("b", 1)
    lanes.add("b", 2)
    lanes.report("c", 3)
    lanes.add("c", 3)
    assert lanes.inflows_of("b") == 1
    lanes.report("b", None)  # its link closed: as one that never said
    assert lanes.inflows_of("b") is None
    assert lanes.finished("a", 1) == [3]


def test_a_link_whose_turn_ends_does_not_win_its_slot_straight_back() -> None:
    """The low count that won a link its slot must not win it back at once when its turn
    ends (TURN_PIECES sent, or measured far slower than the others): it waits behind the
    links waiting, as before counts were said."""
    lanes = UploadLanes(slots=1)
    lanes.report("low", 0)
    assert lanes.add("low", 0) == [0]
    for n in range(1, TURN_PIECES + 2):
        lanes.add("low", n)  # always more queued
    lanes.report("high", 5)
    lanes.add("high", "h")
    sending: Hashable = 0
    for _ in range(TURN_PIECES - 1):
        (sending,) = lanes.finished("low", sending)
    assert lanes.finished("low", sending) == ["h"]  # its turn is over: "high" now
    lanes.add("high", "h2")
    assert lanes.finished("high", "h") == ["h2"]  # "high" keeps it while it has requests


def test_a_slow_lane_that_says_little_still_yields_to_a_waiting_link() -> None:
    lanes = UploadLanes(slots=2)
    lanes.report("slow", 0)
    lanes.report("fast", 3)
    lanes.report("waiting", 4)
    assert lanes.add("fast", 1) == [1]
    assert lanes.add("slow", 2) == [2]
    lanes.add("slow", 3)
    lanes.add("slow", 4)
    lanes.add("fast", 5)
    lanes.add("waiting", 6)
    assert lanes.finished("fast", 1, rate=1e6) == [5]
    lanes.add("fast", 7)
    assert lanes.finished("fast", 5, rate=1e6) == [7]  # the fast lane's rate: measured
    assert lanes.finished("slow", 2, rate=1e5) == [3]  # the first of a turn is not measured
    assert lanes.finished("slow", 3, rate=1e5) == [6]  # far slower: "waiting" gets the slot


def test_links_that_keep_requests_queued_take_turns_whatever_they_say() -> None:
    """Once every waiting link has had a turn, the one saying least must not take every
    turn after: turns go round in the order they ended."""
    lanes = UploadLanes(slots=1)
    for peer, inflows in [("a", 0), ("b", 5), ("c", 7)]:
        lanes.report(peer, inflows)
    tickets = {peer: iter(range(10_000)) for peer in "abc"}

    def ask(peer: str) -> list[Hashable]:
        return lanes.add(peer, (peer, next(tickets[peer])))

    turns = ask("a")
    for peer in "abc":
        for _ in range(3):
            ask(peer)
    order: list[Hashable] = []
    sending = turns[0]
    for _ in range(6 * TURN_PIECES):
        assert isinstance(sending, tuple)
        peer = sending[0]
        ask(peer)  # it always has more queued
        if not order or order[-1] != peer:
            order.append(peer)
        (sending,) = lanes.finished(peer, sending)
    assert order[:6] == ["a", "b", "c", "a", "b", "c"]
