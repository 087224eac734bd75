"""How a swarm fetch ends without the blob; the fetch coordinator decides what comes next."""

from __future__ import annotations


class OwnerUnavailable(Exception):
    """No owner could be reached, this node is the owner, or the owner refused: fetch from the
    upstream."""


class OwnedHere(OwnerUnavailable):
    """This node fetches the blob from the upstream for the cluster: it is the first reachable
    node in rendezvous order (or a member asked it as such) and no other node holds the blob.
    Other nodes' Wants wait on that download."""
