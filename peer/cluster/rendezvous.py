"""Who owns a blob: rendezvous (highest random weight) hashing over the live members.

Every node computes the same order from the same member list, with no coordination; when the
owner dies, the next node in the order takes over, and only blobs of the dead node move.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash


def weight(node_id: bytes, digest: str) -> int:
    return int(xxhash.xxh3_64_intdigest(node_id + digest.encode()))


def owner_order(digest: str, node_ids: Iterable[bytes]) -> list[bytes]:
    """Node ids from most to least preferred owner of `digest`."""
    return sorted(node_ids, key=lambda n: (weight(n, digest), n), reverse=True)
