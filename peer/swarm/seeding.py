"""The owner's first copies: which of its pieces it offers to which peer (BitTorrent's
super-seeding, BEP 16, for a cluster whose nodes cooperate), as a pure state machine.

Why: every fetching node asks for the rarest pieces first, and a piece the owner has just
fetched from the registry is held by the owner alone, so if the owner told everyone about it,
every node would queue that same piece at the owner and the owner's uplink would carry several
copies of each piece before the others had anything to trade. Instead the owner tells each
peer about a few pieces only (a `Have`), choosing the pieces fewest peers hold or were offered:
each piece goes out once before any goes out twice, and the peers trade the rest among
themselves. `PieceMeta` still gives everyone every hash (a piece is verified whoever sends it);
the owner's availability comes from its `Have` and `Bitfield` messages only.

- A peer has at most `per_peer` offers outstanding (offered, its `Have` not yet seen); a new
  offer follows each `Have` (or a Bitfield) from it, or an offer that went stale.
- A piece no peer holds or was offered (a *first copy*) goes to the peer with the fewest
  outstanding offers; a second copy is offered only while fewer than `repeat_limit` offers are
  outstanding in all, so second copies never bury a first copy at the owner's uplink, and only
  of a piece some peer holds already. (A second copy of a piece still on its way to its first
  peer raced it: pushed first copies came to peers that had asked the second copy's holder
  meanwhile, 16-32 MiB of duplicates at 8 hosts in the simulator, none with this rule.)
- The driver may send an offer of a first copy (`first_copy`) as the piece itself, to a peer
  that invited pushes (peer/swarm/owner.py); the piece sent counts as the peer's Have.
- A peer this node chokes is offered nothing (it would be refused), and its outstanding offers
  go to others; it is offered pieces again once unchoked.
- An offer not confirmed within `timeout` seconds no longer counts: the piece may be offered
  again, to any peer (the message was lost, the peer was slow, or its queue at us was full).
- Once the owner holds every piece and each has been seen at some peer, the seeding is over:
  everyone is told everything (a `Bitfield`), and the owner is a plain seed for the endgame.

Time comes in as `now`; the messages to send come out as `Send` actions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from peer.swarm.actions import Send
from peer.swarm.bits import bits_of
from wire.events import Bitfield, Have

OFFERS_PER_PEER = 2
REPEAT_LIMIT = 8  # second copies outstanding at once, over all peers
OFFER_TIMEOUT = 10.0


class Seeder:
    def __init__(
        self,
        digest: str,
        count: int,
        rng: random.Random,
        *,
        held: Iterable[int] = (),
        per_peer: int = OFFERS_PER_PEER,
        repeat_limit: int = REPEAT_LIMIT,
        timeout: float = OFFER_TIMEOUT,
    ) -> None:
        self.digest = digest
        self.count = count
        self.rng = rng
        self.per_peer = per_peer
        self.repeat_limit = repeat_limit
        self.timeout = timeout
        self.held: set[int] = {i for i in held if 0 <= i < count}
        self.open = False  # seeding over: every peer is told every piece
        self._peers: dict[bytes, set[int]] = {}  # interested peer -> pieces it holds
        self._offers: dict[bytes, dict[int, float]] = {}  # peer -> piece -> offered at
        self._told: dict[bytes, set[int]] = {}  # peer -> pieces ever offered to it
        self._holders = [0] * count  # piece -> interested peers known to hold it
        self._offered = [0] * count  # piece -> outstanding offers of it
        self._outstanding = 0  # sum(self._offered)
        # Held pieces with no copy (none holds it, none was offered it): the first copies
        # still to give, kept as the counts change (the owner makes an offer per Have it
        # hears; finding them by a pass over every held piece was the most of its cost).
        self._uncopied: set[int] = set(self.held)
        self._shared: set[int] = set()  # held pieces some peer holds: second copies' choice
        self._seen = 0  # pieces at least one peer holds
        self._choked: set[bytes] = set()  # peers our choker refuses: offered nothing

    # ---- what is known -------------------------------------------------------------------

    @property
    def peers(self) -> list[bytes]:
        return list(self._peers)

    def offers(self, peer: bytes) -> set[int]:
        return set(self._offers.get(peer, ()))

    def copies(self, index: int) -> int:
        """Peers that hold the piece or were offered it (outstanding offers)."""
        return self._holders[index] + self._offered[index]

    def first_copy(self, index: int) -> bool:
        """Is the one outstanding offer of `index` its first copy (no peer holds it)? Such an
        offer may go as the piece itself (pushed): the peer can get it nowhere else. A second
        copy stays an offer, which the peer takes up only if it still lacks the piece (pushed,
        it came twice whenever the peer also got it from a holder: in the simulator, 8 hosts
        one blob at a time, 114-125 MiB of duplicates and 1.11-1.21 x T_min)."""
        return self._holders[index] == 0 and self._offered[index] == 1

    # ---- events --------------------------------------------------------------------------

    def joined(self, peer: bytes, now: float) -> list[Send]:
        """`peer` wants the blob from us (it has been sent the PieceMeta).

        A peer that asks again may have lost what we told it (its fetch began again, a
        link went): it hears its outstanding offers again, or everything once the seeding
        is over. Nothing new is offered for it: a Want cannot buy more of our uplink."""
        if peer in self._peers:
            if self.open:
                return [self._bitfield(peer)]
            return [Send(peer, Have(self.digest, i)) for i in sorted(self._offers[peer])]
        self._peers[peer] = set()
        self._offers[peer] = {}
        self._told[peer] = set()
        if self.open:
            return [self._bitfield(peer)]
        return self._offer(now)

    def left(self, peer: bytes, now: float) -> list[Send]:
        """The link to `peer` is gone: its offers go to others."""
        held = self._peers.pop(peer, None)
        if held is None:
            return []
        for index in held:
            self._add_holder(index, -1)
            if self._holders[index] == 0:
                self._seen -= 1
        for index in self._offers.pop(peer, {}):
            self._add_offered(index, -1)
        del self._told[peer]
        self._choked.discard(peer)
        return self._offer(now)

    def choked(self, peer: bytes, choked: bool, now: float) -> list[Send]:
        """Our choker choked (or unchoked) `peer`."""
        if not choked:
            self._choked.discard(peer)
            return self._offer(now)
        self._choked.add(peer)
        told = self._told.get(peer, set())
        for index in self._offers.get(peer, {}):
            # Withdrawn: its queued requests are refused ("choked"), so it may forget we hold
            # the piece; offered again once unchoked (or never would be, if all were told).
            self._add_offered(index, -1)
            told.discard(index)
        if peer in self._offers:
            self._offers[peer] = {}
        return self._offer(now)

    def piece_ready(self, index: int, now: float) -> list[Send]:
        """The owner holds a new piece (from the registry)."""
        return self.pieces_ready([index], now)

    def pieces_ready(self, indices: Iterable[int], now: float) -> list[Send]:
        """The owner holds these pieces (new ones, or all of a blob it now holds whole):
        the offers they make possible, decided once."""
        new = sorted({i for i in indices if 0 <= i < self.count} - self.held)
        if not new:
            return []
        self.held.update(new)
        for index in new:
            self._recount(index)
        if self.open:
            return [Send(p, Have(self.digest, i)) for i in new for p in self._peers]
        return self._offer(now)

    def peer_has(self, peer: bytes, indices: Iterable[int], now: float) -> list[Send]:
        """`peer` announced pieces (Have, or a Bitfield's set bits)."""
        held = self._peers.get(peer)
        if held is None:
            return []  # not one of ours (or gone)
        offers = self._offers[peer]
        for index in indices:
            if not 0 <= index < self.count or index in held:
                continue
            held.add(index)
            self._add_holder(index, 1)
            if self._holders[index] == 1:
                self._seen += 1
            if offers.pop(index, None) is not None:
                self._add_offered(index, -1)
        return self._offer(now)

    def tick(self, now: float) -> list[Send]:
        """Offers that went stale no longer count; new ones go out in their place."""
        for peer, offers in self._offers.items():
            told = self._told[peer]
            for index in [i for i, at in offers.items() if at + self.timeout <= now]:
                # Lost, or the peer could not ask yet: anyone may be offered it again.
                del offers[index]
                told.discard(index)
                self._add_offered(index, -1)
        return self._offer(now)

    def next_deadline(self) -> float | None:
        """When an outstanding offer goes stale."""
        if self.open:
            return None
        times = [at for offers in self._offers.values() for at in offers.values()]
        return min(times) + self.timeout if times else None

    # ---- decisions -----------------------------------------------------------------------

    def _offer(self, now: float) -> list[Send]:
        if self.open:
            return []
        if len(self.held) == self.count and self._seen == self.count and self._peers:
            self.open = True
            return [self._bitfield(p) for p in self._peers]
        sends: list[Send] = []
        while True:
            send = self._one_offer(now)
            if send is None:
                return sends
            sends.append(send)

    def _one_offer(self, now: float) -> Send | None:
        """The next offer: a first copy to the least busy peer that lacks it, else (under the
        repeat limit) the least copied piece to a peer with room. None: nothing to offer."""
        rooms = [
            p
            for p, offers in self._offers.items()
            if len(offers) < self.per_peer and p not in self._choked
        ]
        if not rooms:
            return None
        self.rng.shuffle(rooms)
        rooms.sort(key=lambda p: len(self._offers[p]))
        # First copies in piece order (a client reads in order), each to the least busy peer
        # that has not been told of it.
        for index in sorted(self._uncopied):
            for peer in rooms:
                if index not in self._told[peer]:
                    return self._record(peer, index, now)
        if self._outstanding >= self.repeat_limit:
            return None
        for peer in rooms:
            candidates = self._shared - self._told[peer] - self._peers[peer]
            if candidates:
                # In the held set's order, as the draws below were always made.
                lacking = [i for i in self.held if i in candidates]
                index = min(lacking, key=lambda i: (self.copies(i), self.rng.random()))
                return self._record(peer, index, now)
        return None

    def _record(self, peer: bytes, index: int, now: float) -> Send:
        self._offers[peer][index] = now
        self._told[peer].add(index)
        self._add_offered(index, 1)
        return Send(peer, Have(self.digest, index))

    def _add_holder(self, index: int, change: int) -> None:
        self._holders[index] += change
        self._recount(index)

    def _add_offered(self, index: int, change: int) -> None:
        self._offered[index] += change
        self._outstanding += change
        self._recount(index)

    def _recount(self, index: int) -> None:
        held = index in self.held
        if held and self._holders[index] + self._offered[index] == 0:
            self._uncopied.add(index)
        else:
            self._uncopied.discard(index)
        if held and self._holders[index] > 0:
            self._shared.add(index)
        else:
            self._shared.discard(index)

    def _bitfield(self, peer: bytes) -> Send:
        return Send(peer, Bitfield(self.digest, bits_of(self.held, self.count)))


def first_copies_pending(seeder: Seeder | None) -> bool:
    """Is this node still handing out the first copies of a blob (its owner, seeding)? Its
    uploads of that blob then go first (upload_lanes.py)."""
    return seeder is not None and not seeder.open
