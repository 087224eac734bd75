"""Who sent wrong bytes of a blob, or gave false hashes of it, decided once the blob's sha256
has spoken: a pure rule.

A piece is checked against the hash its owner gave (xxh3-128: fast, not a cryptographic
promise); the blob against its digest (sha256: the one fact nobody in the cluster chooses).
A piece that fails its hash accuses two members at once: its sender, or the owner whose hash
it failed. Banning the sender there and then let a lying owner get every honest holder of a
blob banned from the node (each ban closes all of that member's links) by giving one false
hash. So the sender is only left out of that blob's fetch, and judged once the blob is whole
and verified:

- the true piece matches the hash its bytes failed: the sender sent bytes that are not the
  blob's, and is banned (a member that relays wrong pieces it was given, in a download still
  unverified, sends bytes that are not the blob's all the same);
- the true piece fails the hash: the hash was false. An owner still downloading hashes what
  its registry sends, before its own sha256 check, so a registry that feeds it wrong bytes
  (a client may name any) makes an honest owner's hashes false: it is banned only if it said
  it held the verified blob (`PieceMeta.verified`), which then was a lie.

A blob that passes every piece hash and fails its sha256 is the same case, or a sender that
matched a hash with other bytes. Only a member that sent every piece of it, with hashes it
gave saying it held the verified blob, is banned for it (its claim and its bytes cannot both
be true); otherwise nobody is, and the node takes that blob from the registry for a while
instead (`BanList.distrust`), so a lie costs one failed download per node, not every pull.
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
    giver: bytes | None  # who gave that hash
    vouched: bool  # ... saying it held the verified blob


def liar(peer: bytes, suspect: Suspect, true_hash: bytes) -> tuple[bytes | None, str]:
    """Who lied about piece `suspect.index` (None: nobody it can be shown of), and how:
    `true_hash` is the hash of the verified blob's piece, cut at `suspect.piece_size`."""
    index = suspect.index
    if true_hash == suspect.expected:
        return peer, f"sent other bytes for piece {index}"
    if suspect.vouched and suspect.giver is not None:
        return suspect.giver, f"said it held the blob verified, and gave a false hash of {index}"
    return None, f"the owner's hash of piece {index} was false (its registry's bytes, perhaps)"


def author_of_failure(sole_voucher: bytes | bool | None, pieces: int, count: int) -> bytes | None:
    """The member to ban for a blob that failed its sha256: the one that sent all `count`
    pieces (this fetch stored `pieces`) with hashes it gave as of the verified blob."""
    if isinstance(sole_voucher, bytes) and pieces == count:
        return sole_voucher
    return None
