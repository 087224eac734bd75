"""How a swarm fetch ends without the blob; the fetch coordinator decides what comes next."""

from __future__ import annotations


class OwnerUnavailable(Exception):
    """No owner could be reached, this node is the owner, or the owner refused: fetch from the
    upstream."""
