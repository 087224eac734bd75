"""Push-pull membership sync over the swarm's TCP links (SWIM's gossip only carries recent
changes; a full exchange now and then heals what was missed, e.g. after a partition).

The member entries use the gossip codec (`peer/cluster/gossip.py`), checked the same way.
"""

from __future__ import annotations

from peer.cluster.gossip import update_in, update_out
from peer.cluster.membership import Membership
from wire.events import Members

SYNC_PERIOD = 30.0  # a full exchange with one random member this often (jittered)


def full_state(membership: Membership, *, reply: bool) -> Members:
    """Everything `membership` knows, as one Members message."""
    return Members([update_out(u) for u in membership.full_state()], reply=reply)


def merge(membership: Membership, event: Members, now: float) -> Members | None:
    """Merge a peer's Members; the answer to send back (None when it was itself an answer).

    Raises:
        BadDatagram: an entry is not a valid member (the link is dropped by the caller).
    """
    membership.merge([update_in(raw) for raw in event.members], now)
    return None if event.reply else full_state(membership, reply=True)
