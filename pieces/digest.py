"""OCI content digests: the only key the store accepts."""

from __future__ import annotations

import re

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


class InvalidDigest(ValueError):
    """A string that is not a `sha256:<64 lowercase hex>` digest."""


def digest_hex(digest: str) -> str:
    """Return the 64 hex characters of a `sha256:` digest.

    Raises:
        InvalidDigest: for any other algorithm, length, case or character. Other algorithms
            (sha512, blake3) are valid OCI but not stored by us: refusing them is clearer than
            caching something we cannot verify.
    """
    match = _SHA256.fullmatch(digest)
    if match is None:
        raise InvalidDigest(f"not a sha256 digest: {digest[:100]!r}")
    return match.group(1)


def is_digest(reference: str) -> bool:
    """True when a manifest reference is a digest rather than a tag."""
    return ":" in reference
