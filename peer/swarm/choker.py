"""Choking for a cluster that cooperates, as a pure state machine: who may ask this node for
pieces.

BitTorrent unchokes the peers that gave it the most (tit-for-tat), to make strangers share.
Every peer here is one of ours, and what counts is the whole rollout's last host, so the rule is
the opposite: every RECHOKE_PERIOD the peers that asked and that this node has served *least*
lately (bytes sent, halved every period) stay unchoked, UNCHOKED - 1 of them, plus one
optimistic pick that rotates every OPTIMISTIC_PERIOD. Nobody is starved for being slow or for
having nothing to give yet, and a short period rotates the slots among many askers. (In the
simulator, 100 hosts: tit-for-tat every 10 s, last host 2.2-3.3 x T_min; least-served every 10 s,
2.2 x; every 2 s, 1.4-1.5 x. docs/issue10/HISTORY.md, "What each technique gained".)
Half a second from the forty-fifth session to the forty-seventh (below): until the first rechoke
every peer that asks is unchoked, so the few early holders (the owners first) queue the requests
of most of the cluster while the nodes that took their first pieces wait to be asked; each
rechoke turns the askers past UNCHOKED away (a Reject), and they ask those other holders. In the
simulator, 100 hosts at 100 Mbit/s: half the uplinks idle for the first 2 s at 2 s, the hosts
1.7-1.9 s behind the registry from then on; at 0.5 s, 1.4 s; last host 1.124, 1.130, 1.114,
1.112, 1.115, 1.121, 1.117, 1.113 x T_min (seeds 0-7) against 1.145, 1.136, 1.152, 1.136, 1.148,
1.145, 1.148, 1.155; 1 s: 1.125, 1.131, 1.124, 1.129 (0, 1, 2, 7); 0.25 s: 1.149 on average of
those four (a peer's service is forgotten too soon). 8 and 16 hosts, uneven links, small images
and one blob at a time: the same (docs/issue10/s45/).
One second since the forty-seventh session, with the owner rule below: 0.5 s won at 100 hosts
and lost at 1,000, 2 s the reverse (simulator, the owner rule on; docs/issue10/s47/): 100 hosts,
224 MiB, seeds 0-7, mean 1.119 at 0.5 s, 1.131 at 1 s (all <= 1.143), 1.151 at 2 s; 1,000 hosts,
1 GiB, seed 0, 1.161 at 0.5 s (the whole swarm 2-3 s later), 1.104 at 1 s, 1.119 at 2 s.
The owners of the blobs this node fetches go first, whatever they were served (`favoured`,
UNCHOKED - 1 of them at most): an owner fetches its blob from the registry and takes the others
from at most PEERS_WHILE_OWNING peers (peer/swarm/fetch.py), so each of those serves it the
most, and ranked by service alone it was choked at every rechoke while its downlink, carrying
the registry's flow beside, has no time to spare. Simulator, 300 hosts, 512 MiB at 100 Mbit/s,
seed 0: the three owners last, 6 s after the other 297, at 1.253 x T_min; with this rule
1.121 (1.113 with the owners that had a registry flow kept, a probe; docs/issue10/s45/).
Peers that asked recently and are not kept are choked: their requests are answered with a Reject
until they are unchoked.

Time comes in as `now`, randomness from the `random.Random` given at construction; `rechoke`
returns the Choke / Unchoke messages to send, `next_deadline` says when to call it again.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from peer.swarm.actions import Send
from wire.events import Choke, Unchoke

# Peers unchoked at once: the least served, plus one optimistic. Twice the links served at once
# (upload_lanes.UPLOAD_SLOTS): an unchoked peer with its requests queued here is sent to as
# soon as a slot frees, and a node near the end of its download is not stuck with every peer
# that holds its last pieces choking it. (Simulator, 100 hosts: 1.39-1.41 x T_min with 8,
# 1.29-1.32 with 12, 1.24-1.26 with 16, 1.26-1.28 with 24.)
UNCHOKED = 16
RECHOKE_PERIOD = 1.0
OPTIMISTIC_PERIOD = 30.0


class Choker:
    def __init__(
        self,
        rng: random.Random,
        now: float,
        *,
        slots: int = UNCHOKED,
        period: float = RECHOKE_PERIOD,
        optimistic_period: float = OPTIMISTIC_PERIOD,
    ) -> None:
        self.rng = rng
        self.slots = slots
        self.period = period
        self.optimistic_period = optimistic_period
        self.choked: set[bytes] = set()
        self.optimistic: bytes | None = None
        self._optimistic_at = now
        self._last_rechoke = now
        self._requesters: dict[bytes, float] = {}  # peer -> when it last asked us
        self._served: dict[bytes, float] = {}  # peer -> bytes we sent it (decaying)

    def request(self, peer: bytes, now: float) -> bool:
        """A peer asks for a piece: True when it may be served (it is not choked)."""
        self._requesters[peer] = now
        return peer not in self.choked

    def served(self, peer: bytes, nbytes: int) -> None:
        """We sent `peer` `nbytes` of piece data."""
        self._served[peer] = self._served.get(peer, 0.0) + nbytes

    def lost(self, peer: bytes) -> None:
        """The link to `peer` is gone: a new link starts unchoked and unranked."""
        self._requesters.pop(peer, None)
        self._served.pop(peer, None)
        self.choked.discard(peer)
        if self.optimistic == peer:
            self.optimistic = None

    def next_deadline(self) -> float:
        return self._last_rechoke + self.period

    def rechoke(self, now: float, favoured: Collection[bytes] = ()) -> list[Send]:
        """Choose who stays unchoked for the next period; the messages that say so.
        `favoured`: the owners this node fetches blobs from, first for the slots."""
        self._last_rechoke = now
        window = 2 * self.period
        for peer in [p for p, at in self._requesters.items() if now - at >= window]:
            del self._requesters[peer]  # stopped asking: no longer competes for a slot
        # Choked peers stay candidates until their link goes: a choked peer stops asking
        # (it knows it would be refused), and must still get its turn to be unchoked.
        candidates = sorted(set(self._requesters) | self.choked)
        self.rng.shuffle(candidates)  # ties (never served) in no fixed order
        ranked = sorted(candidates, key=lambda p: (p not in favoured, self._served.get(p, 0.0)))
        keep = set(ranked[: self.slots - 1])
        rest = [p for p in candidates if p not in keep]
        if self.optimistic not in rest or now - self._optimistic_at >= self.optimistic_period:
            self.optimistic = self.rng.choice(rest) if rest else None
            self._optimistic_at = now
        if self.optimistic is not None:
            keep.add(self.optimistic)
        newly_choked = set(candidates) - keep - self.choked
        newly_unchoked = self.choked & keep
        self.choked = (self.choked | newly_choked) - newly_unchoked
        for peer in self._served:
            self._served[peer] /= 2  # what we sent lately counts, long ago hardly
        sends = [Send(peer, Choke()) for peer in sorted(newly_choked)]
        sends += [Send(peer, Unchoke()) for peer in sorted(newly_unchoked)]
        return sends
