"""Upload slots, held by links rather than by pieces: which waiting request may send now, as a
pure state machine.

A node serves UPLOAD_SLOTS links at once. A link that holds a slot (a *lane*) sends its
requests one piece after the other and keeps the slot while it has requests left, for at most
TURN_PIECES pieces while other links wait; the next link waiting gets the slot when the lane
runs dry or its turn is over. Why per link: a slot per piece let the few
peers with deep request queues take every slot (one link, eight pieces queued behind each
other), so a node sent to four or five peers at once, each flow held back by its receiver's
downlink, while other peers waited for a slot. In the simulator, 100 hosts: the uplinks ran
84 % busy and the last host took 1.44-1.52 x T_min; with slots per link 87 %, and with the
other changes of that commit 1.24-1.30 x (docs/issue10/HISTORY.md, "What each technique
gained").

Within a lane, and among the links waiting for a slot, *urgent* requests go first: the pieces
of a blob this node is still seeding as its owner (first copies, which every other node waits
for), then the rest in arrival order. (8 hosts in the simulator: 1.10-1.16 x T_min with
urgent first, 1.20-1.27 x without: the owner's uplink carried copies of other blobs while the
first copies of its own waited.) Within a lane, among the requests equally urgent, the piece
this node stored most recently goes first (`recent_pieces.py`: the rarest in the swarm; in
arrival order a piece just out of the registry waited behind a queue of older ones at every
hop, and reached the last of 100 hosts 3.6-5.5 s after it left the registry. Simulator, 100
hosts, seeds 0-3: 1.22, 1.25, 1.20, 1.21 x T_min against 1.23, 1.25, 1.29, 1.22; uneven links
1.15, 1.19, 1.14, 1.18 against 1.19, 1.16, 1.16, 1.16). A request is overtaken so at most
OVERTAKES times in a row: the requester keeps asking for the rarest pieces, which are the
ones this node stored last, and an old request (the next piece an in-order client waits for,
say) would otherwise wait for as long as new pieces arrive (without the bound: 100 hosts
1.21, 1.21, 1.22, 1.22, uneven links 1.18, 1.16, 1.18, 1.22).

A link whose pieces go out at under YIELD_BELOW of the rate of the fastest link being served
gives up its slot when its piece is done and other links wait (its turn is over, as after
TURN_PIECES): its receiver's downlink, not ours, holds it back (that receiver takes pieces
from many peers at once), and the slot is worth more to a link that waits. In the simulator at
100 hosts, a receiver with 4 or fewer senders used 18-76 % of its downlink, one with 9 or more
was full, and 5.5 links waited for a slot at every node on average (seed 0, 6-14 s). With the
rule, 100 hosts: 1.19, 1.20, 1.20, 1.22 x T_min (seeds 0-3) against 1.22, 1.25, 1.20, 1.21;
16 hosts, 512 MiB: 1.09, 1.11, 1.11, 1.11 against 1.11, 1.13, 1.13, 1.16; uneven links 1.15,
1.16, 1.19, 1.17 against 1.15, 1.19, 1.14, 1.18 (seeds 1-4). With 8 hosts a node has 7 peers
for 8 slots: no link waits, and the rule never acts.
A free slot goes to the waiting link whose receiver says the fewest transfers come into its
downlink now (`report`: the peer's Inflow messages, peer/swarm/inflow.py): a receiver that
takes pieces from many peers at once gains little from one more, one that takes from few has
room. (Among the links equally urgent; a link whose peer never said goes as one with none.)
In the simulator, 100 hosts, seeds 0-3: 1.146, 1.136, 1.125, 1.123 x T_min against 1.164,
1.162, 1.161, 1.155 without, the median host 0.4 s sooner. A link passed over PASSED_OVER
times while it waits gets the next free slot (among links as urgent) whatever its receiver
says: a count that never falls (a peer that stopped saying, or lies) delays its link, it does
not starve it. A link whose turn ended waits behind the others until it has a slot again: the
low count that won it the slot would win it straight back.
The rate comes from the caller (`finished`: bytes over the seconds the piece took to go out);
the first piece of a turn is not counted (it went into a socket buffer that had drained while
the link waited), the others are averaged. Where our own side holds links back unevenly (a
distant peer gets less of a full uplink than a near one; sealed links pay for the encryption in
the time measured) such links yield more often: they are served in shorter turns, not less.

Tickets are the caller's (any hashable, one per request); the methods return the tickets whose
turn it is now, which the caller then sends (and reports `finished`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from dataclasses import dataclass, field

UPLOAD_SLOTS = 8  # links served at once
# Pieces a link sends in a row while other links wait for a slot; then it waits behind them
# (behind every link whose turn did not just end, until it gets a slot again).
# Without a limit a peer that kept a request queued held its slot for ever (with 16 peers
# unchoked and 8 slots, nothing else makes it let go). The simulator prefers long turns (16
# hosts, seeds 1-3: 1.14, 1.15, 1.19 x T_min without a limit and with 256; 1.16, 1.17, 1.20
# with 64; 1.17, 1.19, 1.20 with 32; 1.18, 1.19, 1.30 with 8; uneven links, seeds 1-4: 1.20,
# 1.20, 1.25, 1.28 with 256, 1.25, 1.27, 1.26, 1.31 with 64).
TURN_PIECES = 256
# Turns in a row that newer pieces may take on a link while its oldest request (of the same
# urgency) waits; then that one goes. (About a second of turns at a 12.5 Mbit/s share.)
OVERTAKES = 8
# A lane sending at under this share of the fastest lane's rate yields its slot to a waiting
# link (0.6 and 0.75 gave the same at 100 hosts, 0.9 and 1.0 worse: 1.28 on seed 0).
YIELD_BELOW = 0.5
RATE_WEIGHT = 0.5  # of a piece's rate in its lane's average (EWMA)
# Free slots given to other links, in a row, before a waiting link gets one whatever its
# receiver's count (see the module doc).
PASSED_OVER = 64
# The rank of a peer that said nothing: after every number a peer can say (wire.frames caps it
# at 65,535). Every node says its number before its first requests: silence is not a claim of
# an empty downlink.
UNSAID = 1 << 20


@dataclass(eq=False)
class _Lane:
    first: tuple[int, int]  # waiting for a slot: (0 urgent / 1 not, since when)
    # Heap of (0 urgent / 1 not, minus when stored here (inf: long ago), arrival, ticket).
    queue: list[tuple[int, float, int, Hashable]] = field(default_factory=list)
    sending: Hashable | None = None
    sent: int = 0  # pieces given turns since the link got its slot
    overtaken: int = 0  # turns in a row not given to the oldest request of its urgency
    rate: float | None = None  # bytes/s its pieces went out at this turn (None: none yet)
    sent_measured: int = 0  # pieces of this turn whose rate the caller gave
    passed_over: int = 0  # slots given to other links while it waited
    # When its turn ended (TURN_PIECES, or slow), by the arrival count; None: it has had a
    # slot since (or never had one). Such links wait behind the others, in that order.
    turned_at: int | None = None


class UploadLanes:
    def __init__(self, slots: int = UPLOAD_SLOTS) -> None:
        if slots < 1:
            raise ValueError("at least one upload slot")
        self.slots = slots
        self._free = slots
        self._serving: dict[Hashable, _Lane] = {}  # peer -> its lane, holding a slot
        self._waiting: dict[Hashable, _Lane] = {}  # peer -> its lane, waiting for a slot
        self._inflows: dict[Hashable, int] = {}  # peer -> transfers into its downlink, it said
        self._arrivals = 0

    # ---- what is known -------------------------------------------------------------------

    @property
    def serving(self) -> list[Hashable]:
        """The peers whose links hold a slot."""
        return list(self._serving)

    @property
    def waiting(self) -> list[Hashable]:
        """The peers whose links wait for a slot."""
        return list(self._waiting)

    def sending(self, peer: Hashable) -> Hashable | None:
        lane = self._serving.get(peer)
        return lane.sending if lane is not None else None

    def inflows_of(self, peer: Hashable) -> int | None:
        """What `peer` said last of the transfers coming into its downlink (None: nothing)."""
        return self._inflows.get(peer)

    def queued(self, peer: Hashable) -> int:
        """Requests of `peer` waiting for their turn (not the one sending)."""
        lane = self._serving.get(peer) or self._waiting.get(peer)
        return len(lane.queue) if lane is not None else 0

    # ---- events --------------------------------------------------------------------------

    def add(
        self, peer: Hashable, ticket: Hashable, urgent: bool = False, stored: float | None = None
    ) -> list[Hashable]:
        """A request of `peer` arrived (`stored`: when this node stored the piece it asks
        for, None for long ago); the tickets whose turn it is now (this one, if its link
        holds a slot and sends nothing)."""
        self._arrivals += 1
        rank = (0 if urgent else 1, self._arrivals)
        lane = self._serving.get(peer)
        if lane is None:
            lane = self._waiting.get(peer)
            if lane is None:
                lane = _Lane(first=rank)
                if self._free and not self._waiting:
                    self._free -= 1
                    self._serving[peer] = lane
                else:
                    self._waiting[peer] = lane
            lane.first = min(lane.first, rank)
        newest_first = math.inf if stored is None else -stored
        heapq.heappush(lane.queue, (rank[0], newest_first, self._arrivals, ticket))
        return self._next_in(peer) if peer in self._serving else []

    def report(self, peer: Hashable, inflows: int | None) -> None:
        """`peer` says `inflows` transfers come into its downlink now (kept until it says
        again or its link is dropped); None: forget what it said (it is gone)."""
        if inflows is None:
            self._inflows.pop(peer, None)
        else:
            self._inflows[peer] = inflows

    def finished(
        self, peer: Hashable, ticket: Hashable, rate: float | None = None
    ) -> list[Hashable]:
        """The ticket whose turn it was has been sent (`rate`: its bytes over the seconds it
        took) or refused (None): the next turns."""
        lane = self._serving.get(peer)
        if lane is None or lane.sending != ticket:
            raise ValueError("finished: that ticket is not sending")
        lane.sending = None
        if rate is not None and rate > 0:
            lane.sent_measured += 1
            # The first piece of a turn is not the link's rate: it went into a socket buffer
            # that had drained while the link waited (all of a small piece at once). The
            # others are averaged.
            if lane.sent_measured > 1:
                old = lane.rate
                lane.rate = rate if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * rate
        return self._next_in(peer)

    def withdraw(self, peer: Hashable, ticket: Hashable) -> list[Hashable]:
        """A request gives up (its task ended) whether or not its turn came: the next turns."""
        lane = self._serving.get(peer)
        if lane is not None and lane.sending == ticket:
            return self.finished(peer, ticket)
        lane = lane or self._waiting.get(peer)
        if lane is None:
            return []
        kept = [entry for entry in lane.queue if entry[3] != ticket]
        if len(kept) == len(lane.queue):
            return []
        heapq.heapify(kept)
        lane.queue = kept
        if peer in self._waiting:
            if not kept:
                del self._waiting[peer]
            else:
                lane.first = min((entry[0], entry[2]) for entry in kept)
            return []
        return self._next_in(peer)

    def drop(self, peer: Hashable) -> list[Hashable]:
        """The link to `peer` is gone: its requests are forgotten (no turn will be given to
        them: the caller ends them; the simulator does, the node instead lets its tasks take
        their turns and end on the closed link), its slot goes to the next link: the next
        turns."""
        self._waiting.pop(peer, None)
        self._inflows.pop(peer, None)
        if self._serving.pop(peer, None) is None:
            return []
        self._free += 1
        return self._grant()

    # ---- inside --------------------------------------------------------------------------

    def _next_in(self, peer: Hashable) -> list[Hashable]:
        lane = self._serving[peer]
        if lane.sending is not None:
            return []
        if lane.queue and self._waiting and (lane.sent >= TURN_PIECES or self._slow(lane)):
            # Its turn is over: behind the other links waiting (ahead of them only with an
            # urgent request, or once passed over PASSED_OVER times, as any waiting link).
            del self._serving[peer]
            self._arrivals += 1
            lane.first = (lane.queue[0][0], self._arrivals)
            lane.sent = 0
            lane.rate = None
            lane.sent_measured = 0
            lane.turned_at = self._arrivals
            self._waiting[peer] = lane
            self._free += 1
            return self._grant()
        if lane.queue:
            best = lane.queue[0]
            oldest = min((e for e in lane.queue if e[0] == best[0]), key=lambda e: e[2])
            if oldest is not best and lane.overtaken >= OVERTAKES:
                lane.queue.remove(oldest)
                heapq.heapify(lane.queue)
                best = oldest
            else:
                heapq.heappop(lane.queue)
            lane.overtaken = 0 if best is oldest else lane.overtaken + 1
            lane.sending = best[3]
            lane.sent += 1
            return [lane.sending]
        del self._serving[peer]  # ran dry: its slot goes to the next link
        self._free += 1
        return self._grant()

    def _slow(self, lane: _Lane) -> bool:
        """Its pieces go out at under YIELD_BELOW of the fastest lane's rate. (The fastest,
        not the median or the second fastest: the lanes that nothing but our uplink holds
        back are the fastest, and are few. Simulator, 100 hosts, seeds 0-3: 1.21, 1.22,
        1.21, 1.22 against the median, 1.20, 1.22, 1.22, 1.21 against the second fastest;
        16 hosts 512 MiB 1.12-1.15 and 1.10-1.13. A peer whose fast rate goes stale while
        its piece stalls makes other lanes end their turns sooner, no more: their slots
        pass to links that wait, none is left idle, and its own turn is bounded as
        before.)"""
        if lane.rate is None:
            return False
        fastest = max(other.rate or 0.0 for other in self._serving.values())
        return lane.rate < YIELD_BELOW * fastest

    def _grant(self) -> list[Hashable]:
        turns: list[Hashable] = []
        while self._free and self._waiting:
            peer = min(self._waiting, key=self._grant_rank)
            lane = self._waiting.pop(peer)
            lane.passed_over = 0
            lane.turned_at = None
            for other in self._waiting.values():
                other.passed_over += 1
            self._free -= 1
            self._serving[peer] = lane
            turns += self._next_in(peer)
        return turns

    def _grant_rank(self, peer: Hashable) -> tuple[int, bool, bool, int, int]:
        """Urgent first; then a link passed over too often; then the links whose turn did
        not end since their last slot, the fewest transfers into the receiver's downlink
        first (a peer that said nothing after those that did), then the first to wait; last
        the links whose turn ended, in the order their turns ended, whatever their counts
        (the low count that won a link its slot would win it straight back, turn after
        turn, once every waiting link had had one)."""
        lane = self._waiting[peer]
        starving = lane.passed_over >= PASSED_OVER
        if lane.turned_at is not None:
            return (lane.first[0], not starving, True, 0, lane.turned_at)
        inflows = self._inflows.get(peer, UNSAID)
        return (lane.first[0], not starving, False, inflows, lane.first[1])
