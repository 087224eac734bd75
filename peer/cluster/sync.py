"""Push-pull membership sync over the swarm's TCP links (SWIM's gossip only carries recent
changes; a full exchange now and then heals what was missed, e.g. after a partition).

The member entries use the gossip codec (`peer/cluster/gossip.py`), checked the same way.
"""

from __future__ import annotations

from peer.cluster.gossip import update_in, update_out
from peer.cluster.membership import Membership
from wire.events import Members

SYNC_PERIOD = 30.0  # a full exchange with one random member this often (jittered)
# A node that joins through others syncs with the first member it hears from (memberlist's
# join does the same): gossip brings it its seed alone, the rest of the cluster only slowly,
# and a pull meanwhile would take this node for the owner of every blob (it is first of two
# in rendezvous order half the time, and the seed the other half). Fetches wait for that
# first sync, until this long after the node started at most.
JOIN_VIEW_WAIT = 5.0


def joins_others(membership: Membership) -> bool:
    """Has this node members to join (a first node's --join, if any, names only itself)?"""
    return any(seed != membership.address for seed in membership.seeds)


def join_sync_peers(membership: Membership) -> list[bytes]:
    """Whom a joining node syncs with first: the live members at a --join address (the seed
    knows the cluster; a node that joined at the same moment, which its answer may name, does
    not), or any live member when none is."""
    alive = membership.alive()
    seeds = set(membership.seeds)
    at_seeds = [m.node_id for m in alive if m.address in seeds]
    return at_seeds or [m.node_id for m in alive]


def is_full_state(event: Members) -> bool:
    """A peer's answer to our push, whole: its last frame (itself and us at least, so two
    entries or more; the one-entry Members a gossip driver sends on links, a refutation or a
    suspicion, is not one). Every frame before an answer's last, and every frame of a push
    but its last, holds MEMBERS_PER_FRAME entries; an answer's last holds fewer."""
    return event.reply and 2 <= len(event.members) < MEMBERS_PER_FRAME


# Entries per Members frame: the largest entry a member may send (a 253-character host name,
# the largest incarnation, port and capacity: 296 bytes of msgpack) times this fits a frame's
# header (wire.frames.MAX_HEADER, 60,000 bytes). The whole table in one frame stopped fitting
# at a few hundred members with long names, ~1,300 with IPv4 addresses, and the link's writer
# then closed the link: every sync, and every link the node opened, failed.
MEMBERS_PER_FRAME = 200


def full_state(membership: Membership, *, reply: bool) -> list[Members]:
    """Everything `membership` knows, as Members frames that fit. A push (`reply` False) asks
    for an answer in its last frame only; the others go as answers do, unanswered."""
    entries = [update_out(u) for u in membership.full_state()]
    chunks = [
        entries[at : at + MEMBERS_PER_FRAME] for at in range(0, len(entries), MEMBERS_PER_FRAME)
    ] or [[]]
    # The last frame must hold fewer than the others and two at least (`is_full_state`): the
    # last two entries again, in a frame of their own (merging an entry twice changes nothing).
    if len(chunks[-1]) == MEMBERS_PER_FRAME:
        chunks.append(entries[-2:])
    elif len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-1] = entries[-2:]
    return [
        Members(chunk, reply=reply or number < len(chunks) - 1)
        for number, chunk in enumerate(chunks)
    ]


def merge(membership: Membership, event: Members, now: float) -> list[Members] | None:
    """Merge a peer's Members; the answer to send back (None when it was itself an answer).

    Raises:
        BadDatagram: an entry is not a valid member (the link is dropped by the caller).
    """
    membership.merge([update_in(raw) for raw in event.members], now)
    return None if event.reply else full_state(membership, reply=True)
