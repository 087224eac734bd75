"""How a swarm fetch ends without the blob; the fetch coordinator decides what comes next."""

from __future__ import annotations


class OwnerUnavailable(Exception):
    """No owner could be reached, or this node is the owner: fetch from the upstream."""


class ClientRefused(Exception):
    """The upstream refused the client (the refusal is on the download for the client)."""
