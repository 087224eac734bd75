"""When a fetch leaves its blob's owner for the next one in rendezvous order: a pure rule,
the same in the node (peer/swarm/fetch.py) and the simulator (bench/simulate/fetch.py).

Gossip's word alone does not move a fetch. The owner is the one node that fetches the blob
from the registry; a fetch that follows a new owner while the old one is alive and fetching
makes the new owner fetch the same bytes from the registry again. On the 16-host testbed (two
cores, every loop starved) gossip buried live owners hundreds of times a minute, and the next
node in rendezvous order took over a layer whose owner was still sending it pieces: the
registry sent three of four layers 1.6-2.3 times. A node that joins and ranks first is no
reason to leave a working owner either. So a fetch leaves its owner when the link to it is
gone (the owner died: the kernel resets its connections; or it was banned) or when the owner
is no longer first and has been silent on its open link for OWNER_SILENT seconds (its host
vanished without a reset, or its process is frozen: gossip noticed first). An owner that
leaves in an orderly way (`pollen` stopping) is dead to gossip at once but keeps its fetches
until its links close: it serves them through its shutdown grace, and that is what they want.

And whoever the owner is, a fetch leaves it when no piece has been stored for OWNER_STALLED
seconds: an owner is a member, perhaps a liar, and one that answers every message (so it is
heard) but sends no piece held a pull for ever (a held-only Want's "I have it" with no hashes
behind it; a member that ranks first). The fetch then takes the next candidate, or the
upstream, and does not come back to the owner it left.
"""

from __future__ import annotations

# A live owner answers the PeersRequest every fetch sends it each PEERS_PERIOD (2 s), and sends
# hashes and offers as its pieces arrive: this long without a word on its link, it is gone.
OWNER_SILENT = 10.0
# No piece stored for this long, the owner is left whatever it says. Long: an honest owner
# waiting on a slow registry sends its first piece late (a registry's own time-out is 30 s).
OWNER_STALLED = 60.0


def leaves_owner(
    *, owner: bytes, first: bytes, linked: bool, heard_at: float, progress_at: float, now: float
) -> bool:
    """Whether a fetch leaves `owner` for `first`, the first live member in rendezvous order
    as gossip sees it now.

    Args:
        linked: the link to the owner is open.
        heard_at: when the owner last sent anything on it.
        progress_at: when the fetch last stored a piece (from anyone), or began with this owner.
    """
    if not linked or stalled(progress_at, now):
        return True
    if first == owner:
        return False
    return now - heard_at > OWNER_SILENT


def stalled(progress_at: float, now: float) -> bool:
    """No piece stored since `progress_at` for longer than an honest owner takes: left, and
    not taken again by that fetch."""
    return now - progress_at > OWNER_STALLED
