"""OCI content digests: the only key the store accepts.

Two algorithms, the ones the OCI image spec registers: sha256 (64 hex digits) and sha512
(128). The store keys content by the hex digits alone: their length says the algorithm, so
one key space holds both (a sha256 and a sha512 key can never be equal).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_ALGORITHM_OF_LENGTH = {64: "sha256", 128: "sha512"}


class InvalidDigest(ValueError):
    """A string that is not a `sha256:<64 hex>` or `sha512:<128 hex>` digest (lower case)."""


def digest_hex(digest: str) -> str:
    """Return the hex digits of a `sha256:` or `sha512:` digest (the store's key).

    Raises:
        InvalidDigest: for any other algorithm, length, case or character. Other algorithms
            (blake3, say) are not stored by us: refusing them is clearer than caching
            something we cannot verify.
    """
    if _DIGEST.fullmatch(digest) is None:
        raise InvalidDigest(f"not a sha256 or sha512 digest: {digest[:150]!r}")
    return digest.partition(":")[2]


def is_store_key(name: str) -> bool:
    """True for the hex digits of a sha256 or sha512 digest (a file name in the store)."""
    return len(name) in _ALGORITHM_OF_LENGTH and all(c in "0123456789abcdef" for c in name)


def digest_of_hex(hex_: str) -> str:
    """The digest a store key stands for (its length says the algorithm)."""
    return f"{_ALGORITHM_OF_LENGTH[len(hex_)]}:{hex_}"


def hasher_for(digest: str) -> Any:
    """A new hashlib object of the digest's algorithm (the digest must be valid)."""
    return hashlib.new(digest.partition(":")[0])


def digest_bytes(data: bytes, like: str = "sha256:") -> str:
    """The digest of `data` in the algorithm of `like` (a digest, or just its `alg:`)."""
    algorithm = like.partition(":")[0]
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def is_digest(reference: str) -> bool:
    """True when a manifest reference is a digest rather than a tag."""
    return ":" in reference
