"""Blob sizes that manifests give, learned from the manifests the node serves.

An upstream states a blob's size in Content-Length, a peer in PieceMeta, and either can lie. The
manifest that names a blob states its size too, in the blob's descriptor, and the client checks
the blob against it: a told size that disagrees with it is wrong, and is refused before anything
is allocated from it.

Two manifests that give one digest different sizes mean that one of them lies (a digest names
one content, so one size), and we cannot tell which: the size is forgotten, and the digest is
held as disputed, never to be learned again. Forgetting alone would not do: any client can make
the node read a manifest from a registry it names, and that registry could set the wrong size
anew after every honest manifest. So such a manifest can at most remove a check, never make a
good blob unfetchable.

Bounded: the DEFAULT_LIMIT most recently learned sizes and the DEFAULT_LIMIT most recently
disputed digests are kept (~250 bytes each). A digest pushed out of the disputed set by 65536
newer disputes can be learned again, and then disputed again by the next honest manifest.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from pieces.digest import InvalidDigest, digest_hex

DEFAULT_LIMIT = 65536
MANIFESTS_LIMIT = 4096  # stored manifests remembered as learned (~100 bytes each)
# Keys of an image manifest, an image index or an artifact manifest that hold descriptors.
_ONE = ("config", "subject")
_MANY = ("layers", "manifests", "blobs")


class DescriptorSizes:
    """digest -> size, as the manifests seen so far give it, and the digests whose manifests
    disagree; both bounded, least recent dropped."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._disputed: OrderedDict[str, None] = OrderedDict()
        # The stored manifests whose sizes were learned (by their digests), with `_learned`
        # as it was then, so that a read parses one again only once its sizes may have been
        # pushed out (`limit` sizes learned since).
        self._manifests: OrderedDict[str, int] = OrderedDict()
        self._learned = 0  # sizes learned (or learned again) so far

    def __len__(self) -> int:
        return len(self._sizes)

    def disputed(self) -> int:
        """How many digests are held as disputed (their sizes are not learned)."""
        return len(self._disputed)

    def size_of(self, digest: str) -> int | None:
        """The size the manifests give `digest`; None when unknown (or disputed)."""
        return self._sizes.get(digest)

    def learn(self, digest: str, size: int) -> None:
        """Remember that a manifest gives `digest` this size, unless the size is disputed."""
        self._learned += 1
        if digest in self._disputed:
            self._disputed.move_to_end(digest)  # still argued about: keep it longest
            return
        known = self._sizes.get(digest)
        if known is not None and known != size:
            # Disputed for good: see the module docstring.
            del self._sizes[digest]
            _put(self._disputed, digest, None, self.limit)
            return
        _put(self._sizes, digest, size, self.limit)

    def learn_stored_manifest(self, manifest_digest: str, body: bytes) -> int:
        """`learn_manifest` for the stored manifest `manifest_digest`, once: every GET and
        HEAD by digest read it, and parsing a 4 MiB one each time held the event loop ~0.36 s
        (four connections asking for one delayed every other request ~1 s). Returns how many
        sizes it learned now (0 when it was learned before)."""
        learned_at = self._manifests.get(manifest_digest)
        if learned_at is not None and self._learned - learned_at < self.limit:
            self._manifests.move_to_end(manifest_digest)
            return 0
        _put(self._manifests, manifest_digest, self._learned, MANIFESTS_LIMIT)
        return self.learn_manifest(body)

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


def _put(table: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    """Set `key` as the most recent entry of `table`, dropping the least recent over `limit`."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)
