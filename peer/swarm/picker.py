"""Which piece to ask of which peer, for one blob: the piece picker, as a pure state machine.

The driver (peer/swarm/fetch.py, or the simulator in bench/simulate/) feeds it what the peers
say (Bitfield, Have, Choke, Reject, a Piece arriving, a link lost) and what the disk did (a
piece stored, a write failed), each with `now`; `schedule(now)` returns the Requests to send
(and the Cancel of a request it moves), `stored` the Cancels and Haves that follow a stored
piece, and `next_deadline()` when the endgame, or the first missing piece, may need a new
look. No clock, no I/O, no global random: the same events and seed give the same requests.

The rules:
- A piece is asked only of a peer that announced it, and only once its hash is known (the
  owner's PieceMeta): a piece that cannot be verified is never fetched.
- Each peer gets at most `queue_depth` requests at once: QUEUE_SECONDS of its measured rate
  (START_REQUESTS before there is a measure), between MIN_REQUESTS and MAX_REQUESTS.
- The first RANDOM_FIRST pieces are picked at random (peers start out holding different
  pieces), then rarest first, the WINDOW pieces after the first missing one before the rest
  (a client reads in order and waits for those).
- One request per piece, except in the endgame: when every missing piece is asked for, a
  piece whose request has waited twice as long as its holder's queue should take may also be
  asked of one other peer; the copy that loses is cancelled.
- Before the endgame, the first missing piece (the one an in-order client waits on) asked of a
  peer that has not sent it within MOVE_FIRST_AFTER seconds, and twice as long as that peer's
  queue should take, is moved: cancelled there and asked of another peer that holds it and
  has room. The cancelled request holds its place in that peer's queue until the peer
  answers it (with the piece, taken if still wanted, or a Reject), and the piece is not
  asked of that peer again before (the link would refuse it). An uploader serves a few of
  the peers that ask at a time, and a request can wait behind the others' for a minute
  (docs/issue10/HISTORY.md, *The clients' reading*).
- A peer that chokes us, goes away or is banned is not asked; its requests are asked elsewhere.
- While this node fetches from the upstream itself, at most `source_limit` peers send to it
  (every flow into its link gets a like share, and the upstream flow is the one the swarm
  waits for).
- Pieces the driver fetches elsewhere (`elsewhere`: a new owner asks the upstream for the
  pieces no peer holds while it takes the rest from peers) are never asked of a peer.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from peer.swarm.actions import Send
from pieces.layout import PieceLayout
from wire.events import Cancel, Have, Request

# A peer's queue: this many seconds of its rate. Short, so that a request waits little behind
# others at a busy peer and goes where pieces flow (libtorrent queues ~3 s, in 16 KiB blocks;
# our pieces are 64 KiB to 4 MiB). Simulator, with the rest of that commit: 16 hosts 1.14-1.19
# x T_min at 1 s, 1.21-1.25 at 3 s; 100 hosts 1.29 either way. Half a second once the
# simulator's rate grid was fine enough to show it (5 ms, 2026-11-30): 100 hosts 1.16, 1.16,
# 1.16, 1.16 (seeds 0-3) against 1.18, 1.18, 1.18, 1.16 at 1 s, a third of the duplicates;
# 8 hosts 1.07, 1.07 against 1.10, 1.08; uneven links 1.11, 1.11 against 1.18, 1.13; 16 hosts
# 512 MiB 1.09, 1.08 against 1.08, 1.09; at 5 ms one-way latency 1.18 both (100 hosts).
QUEUE_SECONDS = 0.5
MIN_REQUESTS, START_REQUESTS, MAX_REQUESTS = 2, 4, 16
RANDOM_FIRST = 4  # the first pieces are picked at random, so peers start out different
ENDGAME_AFTER = 2.0  # at least this long outstanding before a second peer is asked
WINDOW = 16  # pieces ahead of the first missing one that are fetched first (in-order clients)
RATE_WEIGHT = 0.3  # weight of a new sample in a peer's rate estimate (EWMA)
# The first missing piece waits at one peer at least this long before it is asked elsewhere instead.
# Simulator (16 hosts, 512 MiB, 25 Mbit/s, clients reading 16 MB/s: docs/issue10/HISTORY.md, *The
# clients' reading*): seeds 0-7 1.123 x T_min on average against 1.155 without the move, duplicates
# 89-110 MiB of 8 GiB against 66-103 (2 s, a probe whose data was lost with its machine: more
# duplicates, no more gain).
MOVE_FIRST_AFTER = 5.0
# An overdue request that the last schedule could not ask of a second peer is looked at
# again this much later (woken at once, a driver would schedule in a loop until it arrives).
IDLE_WAKE = 1.0


@dataclass(eq=False)
class _Peer:
    available: set[int] = field(default_factory=set)
    choking: bool = False  # it choked us: do not ask
    rate: float | None = None  # bytes/s it delivers to us (EWMA)
    depth: int = START_REQUESTS  # requests to keep in flight at it (from `rate`)
    asked: dict[int, float] = field(default_factory=dict)  # piece -> when we asked it
    # Asked, then cancelled by a move, not yet answered: still in `asked` (the link counts the
    # request until the peer sends the piece or a Reject, wire/protocol.py) but no longer in
    # flight, and never asked of this peer again before the answer (the link would refuse it).
    cancelled: set[int] = field(default_factory=set)


class PiecePicker:
    def __init__(
        self,
        digest: str,
        layout: PieceLayout,
        rng: random.Random,
        *,
        have: Iterable[int] = (),
        source_limit: int | None = None,
    ) -> None:
        self.digest = digest
        self.layout = layout
        self.rng = rng
        self.source_limit = source_limit  # see the module doc; None: no limit
        self._missing = set(range(layout.count)) - set(have)
        self._storing: set[int] = set()  # arrived, being verified and written
        self._elsewhere: set[int] = set()  # fetched by the driver from elsewhere: never asked
        self._hashes: set[int] = set()  # pieces whose hash we know (may be fetched)
        self._peers: dict[bytes, _Peer] = {}
        self._inflight: dict[int, set[bytes]] = {}  # piece -> peers asked for it
        self._holders = [0] * layout.count  # piece -> peers that announced it (rarity)

    # ---- what is known -------------------------------------------------------------------

    @property
    def peers(self) -> list[bytes]:
        return list(self._peers)

    def has_peer(self, peer: bytes) -> bool:
        return peer in self._peers

    @property
    def done(self) -> bool:
        return not self._missing

    @property
    def missing(self) -> set[int]:
        return set(self._missing)

    @property
    def inflight(self) -> dict[int, frozenset[bytes]]:
        return {i: frozenset(p) for i, p in self._inflight.items()}

    def available(self, peer: bytes) -> set[int]:
        state = self._peers.get(peer)
        return set(state.available) if state is not None else set()

    def asking(self) -> set[bytes]:
        """The peers with requests of ours outstanding."""
        return {peer for peer, state in self._peers.items() if state.asked}

    def requests_at(self, peer: bytes) -> int:
        state = self._peers.get(peer)
        return len(state.asked) if state is not None else 0

    def rate(self, peer: bytes) -> float | None:
        state = self._peers.get(peer)
        return state.rate if state is not None else None

    def holders(self, index: int) -> int:
        """Peers that announced `index`."""
        return self._holders[index] if 0 <= index < self.layout.count else 0

    def knows_hash(self, index: int) -> bool:
        return index in self._hashes

    def hashes_missing(self) -> bool:
        return len(self._hashes) < self.layout.count

    def obtainable(self) -> bool:
        """Is any missing piece held by a peer (with its hash known), or being fetched?"""
        if self._inflight or self._storing:
            return True
        return any(self._obtainable(i) for i in self._missing)

    def unobtainable(self) -> set[int]:
        """The missing pieces no peer can give us now: none announced it, or its hash is
        unknown (pieces being stored, asked for, or fetched elsewhere aside)."""
        return {i for i in self._wanted() if i not in self._inflight and not self._obtainable(i)}

    def _wanted(self) -> set[int]:
        """The missing pieces to get from peers: not being stored, not fetched elsewhere."""
        return self._missing - self._storing - self._elsewhere

    def _obtainable(self, index: int) -> bool:
        return (
            index in self._hashes
            and index not in self._storing
            and index not in self._elsewhere
            and self._holders[index] > 0
        )

    def could_ask(self, peer: bytes, index: int) -> bool:
        """Could `schedule` now ask `peer` for `index`, which it just announced? False when we
        hold or are storing it, it is asked of another peer already, its hash is unknown, the
        peer chokes us or its queue is full: then nothing else changed either, and a driver
        may skip the schedule. (A piece asked elsewhere may go to a second peer in the
        endgame, or the first missing piece move to another, but only once overdue:
        `wake_at` wakes the driver for that.)"""
        state = self._peers.get(peer)
        return (
            state is not None
            and index in self._missing
            and index not in self._storing
            and index not in self._elsewhere
            and index not in self._inflight
            and index in self._hashes
            and not state.choking
            and len(state.asked) < state.depth
        )

    def queue_depth(self, peer: bytes) -> int:
        """Requests to keep in flight at `peer`: QUEUE_SECONDS of its measured rate."""
        state = self._peers.get(peer)
        return state.depth if state is not None else START_REQUESTS

    # ---- events from peers ---------------------------------------------------------------

    def add_peer(self, peer: bytes) -> None:
        self._peers.setdefault(peer, _Peer())

    def elsewhere(self, indices: Iterable[int]) -> set[int]:
        """The driver fetches these pieces itself (from the upstream): never ask a peer for
        them, and take none that arrives; missing still, until `stored`. Returns those taken
        on: missing ones nobody is asked for or storing (`unobtainable()` gives such)."""
        taken = {
            i
            for i in indices
            if i in self._missing and i not in self._inflight and i not in self._storing
        }
        self._elsewhere |= taken
        return taken

    def hashes(self, indices: Iterable[int]) -> None:
        """The owner told us these pieces' hashes (PieceMeta)."""
        self._hashes.update(i for i in indices if 0 <= i < self.layout.count)

    def forget_hashes(self, keep: Iterable[int]) -> None:
        """Another owner is asked: only the hashes of `keep` stay known; the other pieces may
        be fetched once its PieceMeta gives theirs (one in flight meanwhile is not taken)."""
        self._hashes = {i for i in keep if 0 <= i < self.layout.count}

    def bitfield(self, peer: bytes, indices: Iterable[int]) -> None:
        """`peer` holds exactly `indices` (a Bitfield replaces what it said before)."""
        state = self._peers.setdefault(peer, _Peer())
        for index in state.available:
            self._holders[index] -= 1
        state.available = {i for i in indices if 0 <= i < self.layout.count}
        for index in state.available:
            self._holders[index] += 1

    def have(self, peer: bytes, index: int) -> None:
        if not 0 <= index < self.layout.count:
            return
        state = self._peers.setdefault(peer, _Peer())
        if index not in state.available:
            state.available.add(index)
            self._holders[index] += 1

    def choke(self, peer: bytes, choking: bool) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.choking = choking

    def rejected(self, peer: bytes, index: int) -> None:
        """`peer` will not send `index` (choked, cancelled, or not there for us: it no longer
        has it, or it is private to credentials the peer has not accepted)."""
        state = self._peers.get(peer)
        moved = state is not None and index in state.cancelled
        self._settle(index, peer)
        if moved:
            return  # the answer to our Cancel: the peer still holds the piece
        if state is not None and index in state.available:
            state.available.discard(index)
            self._holders[index] -= 1

    def unsent(self, peer: bytes, index: int) -> None:
        """The request for `index` could not go to `peer` (its link has no room for more
        requests): free again, and the peer still holds the piece."""
        self._settle(index, peer)

    def requests_lost(self, peer: bytes) -> None:
        """The requests sent to `peer` may never be answered (one of two links to it
        closed): free again; it still holds what it announced."""
        state = self._peers.get(peer)
        if state is not None:
            for index in list(state.asked):
                self._settle(index, peer)

    def lost(self, peer: bytes) -> None:
        """The link to `peer` is gone (or it was banned): its requests are free again."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for index in state.available:
            self._holders[index] -= 1
        for index in state.asked:
            holders = self._inflight.get(index)
            if holders is not None:
                holders.discard(peer)
                if not holders:
                    del self._inflight[index]

    def received(self, peer: bytes, index: int, now: float) -> bool:
        """A piece arrived from `peer`. True when it is wanted: the driver verifies its hash
        and writes it, then calls `stored`, `store_failed` or `bad_piece`. False: a late or
        duplicate copy (the endgame's loser), counted as waste by the driver."""
        state = self._peers.get(peer)
        asked_at = state.asked.get(index) if state is not None else None
        if state is not None and asked_at is not None:
            # The piece waited behind the others queued at that peer: scale by the queue.
            queued = len(state.asked)
            length = self.layout.length(index)
            sample = queued * length / max(now - asked_at, 1e-3)
            old = state.rate
            state.rate = sample if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * sample
            pieces = int(state.rate * QUEUE_SECONDS / self.layout.piece_size) + 1
            state.depth = max(MIN_REQUESTS, min(MAX_REQUESTS, pieces))
        self._settle(index, peer)
        if index not in self._missing or index in self._storing or index in self._elsewhere:
            return False
        if index not in self._hashes:
            return False  # never asked (we could not verify it): not taken
        self._storing.add(index)
        return True

    # ---- events from the disk ------------------------------------------------------------

    def stored(self, index: int, *, owner: bytes | None = None) -> list[Send]:
        """A verified piece is on disk: cancel its other requests, tell the peers we have it.

        A peer that announced the piece is not told (it will never ask us for it): late in a
        piece's spread that is most of them, and each Have costs both nodes a message on the
        event loop. The blob's `owner` is always told: its first copies go to those it has
        not seen holding a piece (peer/swarm/seeding.py).
        """
        self._storing.discard(index)
        self._missing.discard(index)
        self._elsewhere.discard(index)
        sends = [Send(p, Cancel(self.digest, index)) for p in sorted(self._inflight.get(index, ()))]
        sends += [
            Send(p, Have(self.digest, index))
            for p, state in self._peers.items()
            if p == owner or index not in state.available
        ]
        return sends

    def store_failed(self, index: int) -> None:
        """Writing `index` failed: it is missing again."""
        self._storing.discard(index)

    def bad_piece(self, peer: bytes, index: int) -> None:
        """The piece from `peer` failed its hash: the driver bans the peer."""
        self._storing.discard(index)
        self.lost(peer)

    # ---- decisions -----------------------------------------------------------------------

    def schedule(self, now: float) -> list[Send]:
        """Give every peer with free request slots its next pieces."""
        # Most calls find every queue full: answer those before any per-piece work.
        ready = [
            peer
            for peer, state in self._peers.items()
            if not state.choking and len(state.asked) < state.depth
        ]
        if not ready:
            return []
        wanted = self._wanted()
        if not wanted:
            return []
        ahead = heapq.nsmallest(WINDOW, wanted)  # in order: the first missing piece first
        window = set(ahead)
        random_first = self.layout.count - len(self._missing) < RANDOM_FIRST
        endgame: bool | None = None  # every wanted piece asked for: worked out when needed
        limit = self.source_limit
        sources = {p for p, s in self._peers.items() if s.asked} if limit is not None else set()
        self.rng.shuffle(ready)  # no peer is always served first
        # The pieces a fresh request may take (wanted, verifiable, asked of nobody), worked out
        # once per schedule with set operations, not per peer in Python: walking each ready
        # peer's pieces was most of a schedule's time (`python -m bench.picker_cost`).
        pool = (wanted & self._hashes) - self._inflight.keys()
        sends = self._move_first(ahead[0], ready, wanted, sources, now)
        for peer in ready:
            state = self._peers[peer]
            if limit is not None and peer not in sources and len(sources) >= limit:
                continue
            slots = state.depth - len(state.asked)
            picks: list[int] = []
            if not endgame:
                picks = self._fresh_picks(state, pool, window, random_first, slots)
            if not picks:
                if endgame is None:
                    endgame = self._all_asked(wanted)
                if endgame:
                    picks = self._endgame_picks(peer, state, wanted, slots, now)
            if picks:
                sources.add(peer)
                if endgame is False:
                    endgame = None  # these requests may have made it the endgame: look again
            for index in picks:
                self._inflight.setdefault(index, set()).add(peer)
                state.asked[index] = now
                sends.append(Send(peer, Request(self.digest, index)))
            pool.difference_update(picks)
        return sends

    def _move_first(
        self, first: int, ready: list[bytes], wanted: set[int], sources: set[bytes], now: float
    ) -> list[Send]:
        """Before the endgame, move the first missing piece's request from a peer that is
        overdue with it to a ready one that holds it (the fastest): a Cancel and a Request."""
        slow = self._sole_holder(first)
        if slow is None or now <= self._move_at(first, slow) or self._all_asked(wanted):
            return []  # not overdue yet, or the endgame's second copies are for that
        limit = self.source_limit
        takers = [
            p
            for p in ready
            if p != slow
            and first in (state := self._peers[p]).available
            and first not in state.asked  # a move away from it is still unanswered
            and len(state.asked) < state.depth
            and (limit is None or p in sources or len(sources) < limit)
        ]
        if not takers:
            return []
        taker = max(takers, key=lambda p: self._peers[p].rate or 0.0)
        self._peers[slow].cancelled.add(first)  # stays in its `asked` until it answers
        self._inflight[first] = {taker}
        self._peers[taker].asked[first] = now
        sources.add(taker)
        return [Send(slow, Cancel(self.digest, first)), Send(taker, Request(self.digest, first))]

    def next_deadline(self) -> float | None:
        """When a request becomes overdue (in the endgame a second peer may then be asked,
        before it the first missing piece moved); None when nothing waits on time (events
        alone move the picker on)."""
        deadlines = self._overdue_deadlines()
        return min(deadlines) if deadlines else None

    def _overdue_deadlines(self) -> list[float]:
        """When each endgame request asked of one peer only becomes overdue; before the
        endgame (some wanted piece asked of nobody), when the first missing piece's does."""
        wanted = self._wanted()
        if not wanted:
            return []
        if not self._all_asked(wanted):
            first = min(wanted)
            holder = self._sole_holder(first)
            return [] if holder is None else [self._move_at(first, holder)]
        return [
            self._overdue_at(index, holder)
            for index in wanted
            if len(holders := self._inflight[index]) == 1
            for holder in holders
        ]

    def wake_at(self, now: float) -> float | None:
        """When the driver, having just scheduled at `now`, should schedule again for time's
        sake (events aside): just after the next request becomes overdue (a second peer is
        asked only once it is *over*due), and no later than IDLE_WAKE from now when one is
        overdue already and this schedule could do nothing about it (without the first rule
        a request falling due meanwhile waited for that second). None: only events move the
        picker on."""
        deadlines = self._overdue_deadlines()
        if not deadlines:
            return None
        coming = [d for d in deadlines if d > now]
        wake = min(coming) + 1e-6 if coming else None
        if len(coming) < len(deadlines):  # one is overdue already, with no second peer
            wake = now + IDLE_WAKE if wake is None else min(wake, now + IDLE_WAKE)
        return wake

    def _fresh_picks(
        self, state: _Peer, pool: set[int], window: set[int], random_first: bool, slots: int
    ) -> list[int]:
        fresh = pool & state.available
        if state.cancelled:
            fresh -= state.cancelled  # its answer to the moved request is still to come
        if not fresh:
            return []
        rng = self.rng
        if random_first:
            return heapq.nsmallest(slots, fresh, key=lambda i: (i not in window, rng.random()))
        holders = self._holders
        return heapq.nsmallest(
            slots, fresh, key=lambda i: (i not in window, holders[i], rng.random())
        )

    def _endgame_picks(
        self, peer: bytes, state: _Peer, wanted: set[int], slots: int, now: float
    ) -> list[int]:
        picks = [
            i
            for i in sorted(wanted)
            if i in state.available
            and len(holders := self._inflight[i]) == 1
            and i not in state.asked  # asked of it already (in flight, or moved away)
            and all(self._overdue_at(i, h) < now for h in holders)
        ]
        return picks[:slots]

    def _all_asked(self, wanted: set[int]) -> bool:
        """The endgame: every wanted piece is asked of some peer."""
        return all(i in self._inflight for i in wanted)

    def _sole_holder(self, index: int) -> bytes | None:
        """The one peer `index` is asked of; None when it is asked of none, or of two."""
        holders = self._inflight.get(index)
        if holders is None or len(holders) != 1:
            return None
        (holder,) = holders
        return holder

    def _overdue_at(self, index: int, holder: bytes) -> float:
        """When the request for `index` at `holder` will have waited twice as long as that
        peer's queue should take: only then is a second peer asked (asking sooner sends
        pieces twice over links that are merely busy; each uploader serves several peers)."""
        return self._waited(index, holder, ENDGAME_AFTER)

    def _move_at(self, index: int, holder: bytes) -> float:
        """When the first missing piece's request at `holder` may move to another peer."""
        return self._waited(index, holder, MOVE_FIRST_AFTER)

    def _waited(self, index: int, holder: bytes, at_least: float) -> float:
        """When the request for `index` at `holder` will have waited `at_least` and twice as
        long as that peer's queue should take."""
        state = self._peers[holder]
        asked_at = state.asked[index]
        if state.rate is None:
            expected = QUEUE_SECONDS
        else:
            expected = len(state.asked) * self.layout.piece_size / state.rate
        return asked_at + max(at_least, 2 * expected)

    def _settle(self, index: int, peer: bytes) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.asked.pop(index, None)
            state.cancelled.discard(index)
        holders = self._inflight.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._inflight[index]
