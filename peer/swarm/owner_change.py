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
"""

from __future__ import annotations

# A live owner answers the PeersRequest every fetch sends it each PEERS_PERIOD (2 s), and sends
# hashes and offers as its pieces arrive: this long without a word on its link, it is gone.
OWNER_SILENT = 10.0


def leaves_owner(*, owner: bytes, first: bytes, linked: bool, heard_at: float, now: float) -> bool:
    """Whether a fetch leaves `owner` for `first`, the first live member in rendezvous order
    as gossip sees it now.

    Args:
        linked: the link to the owner is open.
        heard_at: when the owner last sent anything on it.
    """
    if not linked:
        return True
    if first == owner:
        return False
    return now - heard_at > OWNER_SILENT
