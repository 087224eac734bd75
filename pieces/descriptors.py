"""Blob sizes that manifests give, learned from the manifests the node serves.

An upstream states a blob's size in Content-Length, a peer in PieceMeta, and either can lie. The
manifest that names a blob states its size too, in the blob's descriptor, and the client checks
the blob against it: a told size that disagrees with it is wrong, and is refused before anything
is allocated from it.

Bounded: the DEFAULT_LIMIT most recently learned digests are kept (~250 bytes each). Two
manifests that give one digest different sizes mean that one of them lies (a digest names one
content, so one size), and we cannot tell which: the size is forgotten. So a manifest from a
registry that a client names can at most remove a check, never make a good blob unfetchable.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from pieces.digest import InvalidDigest, digest_hex

DEFAULT_LIMIT = 65536
# Keys of an image manifest, an image index or an artifact manifest that hold descriptors.
_ONE = ("config", "subject")
_MANY = ("layers", "manifests", "blobs")


class DescriptorSizes:
    """digest -> size, as the manifests seen so far give it; bounded, least recent dropped."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._sizes: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sizes)

    def size_of(self, digest: str) -> int | None:
        """The size the manifests give `digest`; None when unknown (or disputed)."""
        return self._sizes.get(digest)

    def learn(self, digest: str, size: int) -> None:
        """Remember that a manifest gives `digest` this size."""
        known = self._sizes.get(digest)
        if known is not None and known != size:
            del self._sizes[digest]  # disputed: see the module docstring
            return
        self._sizes[digest] = size
        self._sizes.move_to_end(digest)
        while len(self._sizes) > self.limit:
            self._sizes.popitem(last=False)

    def learn_manifest(self, body: bytes) -> int:
        """Remember the sizes of every descriptor in a manifest or index; returns how many.

        Bodies that are not JSON, and descriptors without a sha256 digest and a size, are
        skipped: this only adds checks, it never refuses a manifest.
        """
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return 0
        if not isinstance(document, dict):
            return 0
        descriptors: list[Any] = [document.get(key) for key in _ONE]
        for key in _MANY:
            entries = document.get(key)
            if isinstance(entries, list):
                descriptors += entries
        learned = 0
        for descriptor in descriptors:
            if not isinstance(descriptor, dict):
                continue
            digest, size = descriptor.get("digest"), descriptor.get("size")
            if not isinstance(digest, str) or type(size) is not int or size < 0:
                continue
            try:
                digest_hex(digest)
            except InvalidDigest:
                continue
            self.learn(digest, size)
            learned += 1
        return learned
