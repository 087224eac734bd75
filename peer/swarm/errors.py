"""How a swarm fetch ends without the blob; the fetch coordinator decides what comes next."""

from __future__ import annotations


class OwnerUnavailable(Exception):
    """No owner could be reached, this node is the owner, or the owner refused: fetch from the
    upstream."""


class OwnedHere(OwnerUnavailable):
    """This node is the blob's owner (first in rendezvous order, and no other node holds it):
    it fetches the blob from the upstream for the cluster, whose Wants wait on that download."""
