"""Telling the peers that hold our requests how many transfers come into our downlink, as a
pure state machine.

An uploader gives a free slot to the waiting link whose receiver has the fewest transfers
coming in (peer/swarm/upload_lanes.py): one more flow into a downlink that takes pieces from
many peers at once adds little (it takes its share from the others), into one that takes from
few it adds what the link lacks. The receiver alone knows the number, so it says it (Inflow,
wire/events.py) to the peers where its requests wait for a slot: those holding its requests
and sending it nothing. It says it again only when it changed since it last told that peer,
and a change is told COALESCE seconds after it happens, with the number as it is then: a link
that ends one piece and starts the next back to back is not news. A peer about to get its
first requests (or requests after a change it was not told) hears the number before them.

The count is the driver's (links receiving a piece now, plus answers arriving from the
upstream now: a blob's owner that takes it in chunks from the registry counts each, so that
its peers rank it low and its downlink keeps room for the registry, which the whole swarm
waits for); time comes in as `now`. `changed` says when to `flush`; `flush` and `before_requests`
say what to send.
"""

from __future__ import annotations

from collections.abc import Iterable

# Seconds from a change to the Inflows that tell it. Probes of the simulator (100 hosts, seed
# 0, not kept; 1.16 x T_min without Inflows): every change told at once 1.14, 235 Inflows per
# node and second; 20 ms later 1.13, 97 a second; the uploaders ranking by the true numbers
# as they were up to 0.1 s before 1.14, up to 0.25 s before 1.18: the number must be fresh,
# and a count the uploader works out itself (the rate its last turn went at) gained nothing.
COALESCE = 0.02
# A link whose last piece ended this recently still counts as receiving: back to back, the
# next piece's frame is on its way (the simulator's flow stays one flow). Under COALESCE, so
# that a flush a change set off sees a link whose pieces stopped as stopped.
RECEIVING_GAP = COALESCE / 2


class InflowReports:
    def __init__(self) -> None:
        self._told: dict[bytes, int] = {}  # peer -> the number it was told last
        self._due: float | None = None  # when the pending change is to be told

    def changed(self, now: float) -> float | None:
        """The number may have changed: when to `flush` (None: a flush is due already)."""
        return self.recount_at(now + COALESCE)

    def recount_at(self, at: float) -> float | None:
        """The number counted at a flush may change by `at` with no event to say so (a link
        whose piece ended within RECEIVING_GAP counted as receiving): when to `flush` again
        (None: a flush is due already)."""
        if self._due is not None:
            return None
        self._due = at
        return at

    def flush(self, inflows: int, waiting_at: Iterable[bytes]) -> list[bytes]:
        """The peers to tell `inflows` now: of `waiting_at` (holding our requests, sending us
        nothing), those not told it last."""
        self._due = None
        told = self._told
        peers = [peer for peer in waiting_at if told.get(peer) != inflows]
        for peer in peers:
            told[peer] = inflows
        return peers

    def before_requests(self, peer: bytes, inflows: int) -> bool:
        """Requests are about to go to `peer`: True when it must hear `inflows` first."""
        if self._told.get(peer) == inflows:
            return False
        self._told[peer] = inflows
        return True

    def forget(self, peer: bytes) -> None:
        """The peer is gone: a new link to it starts untold."""
        self._told.pop(peer, None)
