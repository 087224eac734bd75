"""Who sent wrong bytes of a blob, decided once the blob's sha256 has spoken: a pure rule.

A piece is checked against the hash its owner gave (xxh3-128: fast, not a cryptographic
promise); the blob against its digest (sha256: the one fact nobody in the cluster chooses).
A piece that fails its hash accuses two members at once: its sender, or the owner whose hash
it failed. Banning the sender there and then let a lying owner get every honest holder of a
blob banned from the node (each ban closes all of that member's links) by giving one false
hash. So the sender is only left out of that blob's fetch, and judged once the blob is whole
and verified: when the true piece matches the hash its bytes failed, it sent bytes that are
not the blob's, and it is banned.

Nothing else is proof. A hash the true piece fails may be an honest owner's: an owner hashes
and passes on pieces while it downloads, before its own sha256 check, so a registry that
feeds it wrong bytes (any client may name one) makes its hashes wrong. A blob that passes
every piece hash and fails its sha256 is the same case, or a sender that matched a hash with
other bytes (xxh3 is not collision resistant). Neither bans anyone: the node takes that blob
from the registry for a while instead (`BanList.distrust`), so a lie costs one failed download
per node, not every pull. (A member that relays wrong pieces it was given, in a download
still unverified, sends bytes that are not the blob's all the same, and may be banned.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Suspect:
    """A peer whose piece failed the hash its owner gave: left out of the fetch, judged once
    the blob verifies."""

    index: int
    piece_size: int  # of the layout the hash was for (the verified blob is read in it)
    expected: bytes  # the hash its bytes failed


def sent_wrong_bytes(suspect: Suspect, true_hash: bytes) -> bool:
    """Did the suspect send bytes that are not the blob's? `true_hash`: the hash of the
    verified blob's piece `suspect.index`, cut at `suspect.piece_size`."""
    return true_hash == suspect.expected
