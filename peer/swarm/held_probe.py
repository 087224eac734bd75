"""Whom a blob's owner asks, in turn, whether they hold the blob already (a pure rule, the
same in the node, peer/swarm/fetch.py, and the simulator, bench/simulate/fetch.py).

A node that joins a cluster ranks first in rendezvous order for some blobs that the cluster
holds, or is fetching from the registry right now: the previous owner, next in order (or a
few further when several joined at once), has them. So an owner asks the next HELD_ASKED nodes
with a held-only Want before it fetches a blob itself. A node asked that neither holds nor
fetches the blob from the registry names the node it fetches it from (if any): when many
joined at once, the next in order are new themselves, and the old nodes among them point at
the previous owner. Redirects are followed first, within a budget of asks (a liar's redirect
costs one round trip, and the pieces of whoever answers are checked as any owner's are).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from wire.events import NOT_HELD_HEADER, Refused

# Simulator, origin bytes / image (`pollen bench simulate --seed S`): 20 hosts and 20 joining
# at 5 s, 1.333 asking 1 or 2 in turn, 1.000 asking 4 or 8; 10 hosts and 30 joining (seeds 2,
# 1), 1.667 and 1.333 asking 4, 1.000 and 1.000 asking 8. The cost in a first rollout, where
# nobody holds anything: a round trip (and a link) per node asked before the owner's registry
# fetch starts; 16 hosts at 5 ms latency, last host 1.125 x T_min (mean of seeds 0-3) asking
# none, 1.138 asking 2, 1.143 asking 4 or 8 (at 0 ms, 1.138 asking none or 4); 100 hosts,
# seed 0, 1.20 asking 4 or 8.
HELD_ASKED = 8
REDIRECTS = HELD_ASKED  # at most this many asks beyond HELD_ASKED, each one named by a refusal
# A node that holds the blob answers at once, one that fetches it from the registry when the
# registry's first answer is in: an ask gets this long (the link included), all asks together
# HELD_PROBE_TIMEOUT, then the owner fetches the blob itself (a frozen or silent node, or a
# liar that names another, must not hold the blob's registry fetch back for long).
HELD_ASK_TIMEOUT = 3.0
HELD_PROBE_TIMEOUT = 6.0


class HeldProbe:
    """The nodes to ask, one at a time: the next in order, then whoever refusals name."""

    def __init__(self, own_id: bytes, later: Sequence[bytes]) -> None:
        self._own_id = own_id
        self._queue = deque(later[:HELD_ASKED])
        self._asked: set[bytes] = set()
        self._asks_left = HELD_ASKED + REDIRECTS

    def next(self) -> bytes | None:
        """The next node to ask; None when the owner should fetch the blob itself."""
        while self._queue and self._asks_left > 0:
            candidate = self._queue.popleft()
            if candidate not in self._asked:
                self._asked.add(candidate)
                self._asks_left -= 1
                return candidate
        return None

    def refused(self, fetches_from: bytes | None) -> None:
        """The node asked has not got the blob; it fetches it from `fetches_from` (a node
        whose word is taken as a hint: asked next, unless it is us or was asked already)."""
        if fetches_from is None or fetches_from == self._own_id:
            return
        if fetches_from not in self._asked and fetches_from not in self._queue:
            self._queue.appendleft(fetches_from)


def not_held(digest: str, fetches_from: bytes | None) -> Refused:
    """The answer to a held-only Want for a blob not held here (nor fetched from the
    upstream), naming the node it is fetched from (NOT_HELD_HEADER: hex, or "-")."""
    value = fetches_from.hex() if fetches_from is not None else "-"
    return Refused(digest, 404, {NOT_HELD_HEADER: value})


def fetches_from(value: str) -> bytes | None:
    """The node a NOT_HELD_HEADER value names (None for "-" or anything not a node id)."""
    if len(value) != 32:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
