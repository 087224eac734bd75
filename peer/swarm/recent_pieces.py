"""When this node stored its most recent pieces: the upload lanes send the newest first.

A piece that just arrived here is among the rarest in the swarm (one just out of the registry
is wanted by every node and held by a few), and behind a queue of older pieces it waited a
queue's time at every hop. Bounded: only the last RECENT_LIMIT pieces are remembered, older
ones count as stored long ago (rarity fades within seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

# About 1 GiB of pieces at 256 KiB: seconds of a node's intake at any link speed we serve.
RECENT_LIMIT = 4096


class RecentPieces:
    def __init__(self, limit: int = RECENT_LIMIT) -> None:
        self._limit = limit
        self._stored: OrderedDict[tuple[str, int], float] = OrderedDict()  # in storing order

    def stored(self, digest: str, indices: Iterable[int], now: float) -> None:
        """These pieces of `digest` were stored here at `now`."""
        for index in indices:
            key = (digest, index)
            self._stored[key] = now
            self._stored.move_to_end(key)  # re-stored (a blob fetched again): newest now
        while len(self._stored) > self._limit:
            self._stored.popitem(last=False)

    def stored_at(self, digest: str, index: int) -> float | None:
        """When the piece was stored here; None when long ago (or never)."""
        return self._stored.get((digest, index))
