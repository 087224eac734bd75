"""Who lied about a blob's bytes, decided once the blob's sha256 has spoken: a pure rule.

A piece is checked against the hash its owner gave (xxh3-128: fast, not a cryptographic
promise); the blob against its digest (sha256: the one fact nobody in the cluster chooses).
So a piece that fails its hash accuses two members at once: the peer that sent it, or the
owner whose hash it failed. Banning the sender there and then let a lying owner get every
honest holder of a popular blob banned from the node (each ban closes all of that member's
links) by giving one false hash. The sender is now only left out of this blob's fetch, and
judged once the blob is whole and verified: if the true piece matches the hash, the sender
lied; if not, the owner did.

A blob that fails its sha256 after every piece passed its hash has no such witness: any
member that sent pieces (one may have matched a hash it did not know the bytes of: xxh3 is
not collision resistant) or gave the hashes could be the liar. When one member did all of
it, it is banned; otherwise nobody is, and the swarm is not asked for that blob for a while
(the registry is: `BanList.distrust`), so a lie costs one failed download, not every pull.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Suspect:
    """A peer whose piece failed the hash its owner gave: left out of the fetch, judged later."""

    index: int
    expected: bytes  # the hash its bytes failed
    giver: bytes  # the owner that gave that hash


def judge_suspect(peer: bytes, suspect: Suspect, true_hash: bytes) -> tuple[bytes, str]:
    """The liar, and why, once the blob verified: `true_hash` is the hash of the verified
    blob's piece `suspect.index`."""
    if true_hash == suspect.expected:
        return peer, f"sent piece {suspect.index} failing its hash (the blob verified)"
    return suspect.giver, f"gave a false hash of piece {suspect.index} (the blob verified)"


def sole_author(senders: Collection[bytes], hash_givers: Collection[bytes]) -> bytes | None:
    """The member to ban for a blob that failed its sha256: the only one that sent its
    pieces and gave their hashes, if one did; None when more than one had a hand in it."""
    members = set(senders) | set(hash_givers)
    return next(iter(members)) if len(members) == 1 else None
