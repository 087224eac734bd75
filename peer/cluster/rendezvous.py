"""Who owns a blob: rendezvous (highest random weight) hashing over the live members.

Every node computes the same order from the same member list, with no coordination; when the
owner dies, the next node in the order takes over, and only blobs of the dead node move.

Weighted by declared upload capacity (`--uplink`): an owner sends the first copy of every
piece of its blobs, so a host with a quarter of the uplink that owns a large layer holds the
whole rollout back (simulated: 16 hosts, 4 of them at 25 Mbit/s of 100, last host done at
2.4-3.1 x the bound when a slow host owned a layer, 1.5 when none did). Each member's score
is `-w / ln(h)` with `h` its hash in (0, 1) (weighted rendezvous hashing: a member with w
twice another's is first twice as often) and w = capacity ** WEIGHT_EXPONENT, so that a host
at a quarter owns a sixty-fourth of a fast one's share, and one at half an eighth. The cube,
not the square (the fiftieth session, `docs/issue10/s50/`): with a sixteenth, 16 simulated
hosts with 4 at a quarter still had a slow owner of a 75 MiB layer in 1 seed of 8 (last host
1.338 x the bound; 24 seeds: mean 1.159, 5 over 1.2), with the cube none (1.102; mean 1.146,
4 over 1.2); a fourth power gained nothing more (1.145) and would lean twice as hard on any
member that declares more than it has. The weights are absolute, not relative to the
members present: a member's death moves only its own blobs, as without weights. A member
that declares nothing counts as UNDECLARED (10 Gbit/s: as fast as any), and so does one that
declares more (a member that claims the fastest link still owns more than its share: weights
are declared, not measured); when all weights are equal (none declares, or all alike), the
order is the plain one of the hashes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import xxhash

_SPAN = float(2**64)
UNDECLARED = 10_000_000_000 // 8  # bytes/s a member that declares no capacity counts as
WEIGHT_EXPONENT = 3


def weight(node_id: bytes, digest: str) -> int:
    return int(xxhash.xxh3_64_intdigest(node_id + digest.encode()))


def owner_order(
    digest: str, node_ids: Iterable[bytes], capacity: Mapping[bytes, int] | None = None
) -> list[bytes]:
    """Node ids from most to least preferred owner of `digest`; `capacity`: declared upload
    bytes/s per node (missing or 0: not declared)."""
    ids = list(node_ids)
    if not any((capacity or {}).get(n, 0) > 0 for n in ids):
        return sorted(ids, key=lambda n: (weight(n, digest), n), reverse=True)

    def score(node: bytes) -> tuple[float, bytes]:
        declared = (capacity or {}).get(node, 0)
        # Past UNDECLARED a claim is no real link's: a liar's, who would own every blob.
        declared = min(declared, UNDECLARED) if declared > 0 else UNDECLARED
        share = (float(declared) / UNDECLARED) ** WEIGHT_EXPONENT
        h = (weight(node, digest) + 0.5) / _SPAN  # in (0, 1), never 0 or 1
        return (-share / math.log(h), node)

    return sorted(ids, key=score, reverse=True)


def cluster_uplink(declared: Iterable[int]) -> int:
    """The uplink a cluster's blobs are cut for (pieces/layout.py, `piece_size_for`): the
    median of what its live members declare (the lower of the middle two; one that declares
    nothing, or more than UNDECLARED, counts as UNDECLARED), 0 where that is UNDECLARED (as
    fast as any: no cap). Every node that sees the same members gets the same answer, so a
    blob is cut alike whichever of them owns it: a new owner that never fetched it cuts it as
    the one before did, and the downloads in progress go on in its pieces (cut by each
    owner's own uplink, they would take the rest from the registry). A few slow hosts among
    fast ones leave the pieces as they are (their blobs' first copies are made rare by the
    weights above)."""
    values = sorted(min(c, UNDECLARED) if c > 0 else UNDECLARED for c in declared)
    if not values:
        return 0
    middle = values[(len(values) - 1) // 2]
    return 0 if middle >= UNDECLARED else middle
