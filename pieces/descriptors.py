"""Blob sizes that manifests give, learned from the manifests the node serves, per repository.

An upstream states a blob's size in Content-Length, a peer in PieceMeta, and either can lie. The
manifest that names a blob states its size too, in the blob's descriptor, and the client checks
the blob against it: a told size that disagrees with it is wrong, and is refused before anything
is allocated from it.

A size is the word of the repository whose manifest gave it, at its registry (a base URL, as
`Upstreams.base_url` gives it), and it checks only the downloads of that blob from that
repository. Any client can make the node read a manifest from a registry it names, and on a
registry anyone can push to (Docker Hub, GHCR, a shared Harbor) from a repository it pushes
to: that manifest can give the real digest of another repository's blob any size. Learned for
every registry (until 2026-12-03), then for every repository of the registry, such a size
failed (502) that blob's pulls from the honest repository, and its transfers from the peers
that held it, until a manifest with the true size came by.

Two manifests from one repository that give one digest different sizes mean that one of them
lies (a digest names one content, so one size), and we cannot tell which: the size is
forgotten, and the digest is held as disputed for that repository, never to be learned again
from it. Forgetting alone would not do: the repository could set the wrong size anew after
every honest manifest. So a repository's manifests can at most remove a check of its own, and
never make a good blob unfetchable from another repository.

Bounded: the DEFAULT_LIMIT most recently learned (repository, digest) sizes and the
DEFAULT_LIMIT most recently disputed ones are kept (~300 bytes each; up to ~800 where each has
a repository of its own with a long name), whatever the number of repositories. A digest
pushed out of the disputed set by 65536 newer disputes can be learned again, and then disputed
again by the next honest manifest of that repository. Names are not interned: clients choose
them, and CPython 3.12 kept interned strings for good (python/cpython#113993); the keys of
one manifest share its names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple


class Repository(NamedTuple):
    """A repository at a registry: where a manifest came from, and where a download asks."""

    registry_url: str  # the registry's base URL, as `Upstreams.base_url` gives it
    name: str  # the repository, `library/alpine`


Key = tuple[str, str, str]  # (registry URL, repository, digest): whose size of what
DEFAULT_LIMIT = 65536
MANIFESTS_LIMIT = 4096  # (repository, stored manifest) pairs remembered as learned (~200 bytes)


class DescriptorSizes:
    """(repository, digest) -> size, as the manifests seen so far from that repository give
    it, and the (repository, digest) pairs whose manifests disagree; both bounded, least
    recent dropped."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._sizes: OrderedDict[Key, int] = OrderedDict()
        self._disputed: OrderedDict[Key, None] = OrderedDict()
        # The stored manifests whose sizes were learned, by repository and digest, with
        # `_learned` as it was then, so that a read parses one again only once its sizes may
        # have been pushed out (`limit` sizes learned since).
        self._manifests: OrderedDict[Key, int] = OrderedDict()  # (repository, manifest digest)
        self._learned = 0  # sizes learned (or learned again) so far

    def __len__(self) -> int:
        return len(self._sizes)

    def disputed(self) -> int:
        """How many (repository, digest) pairs are held as disputed (their sizes are not
        learned)."""
        return len(self._disputed)

    def size_of(self, repository: Repository, digest: str) -> int | None:
        """The size `repository`'s manifests give `digest`; None when unknown (or disputed).
        Another repository's word is not asked: see the module docstring."""
        return self._sizes.get((*repository, digest))

    def learn(self, repository: Repository, digest: str, size: int) -> None:
        """Remember that a manifest from `repository` gives `digest` this size, unless that
        repository's size of it is disputed."""
        self._learned += 1
        key = (*repository, digest)
        if key in self._disputed:
            self._disputed.move_to_end(key)  # still argued about: keep it longest
            return
        known = self._sizes.get(key)
        if known is not None and known != size:
            # Disputed for good: see the module docstring.
            del self._sizes[key]
            _put(self._disputed, key, None, self.limit)
            return
        _put(self._sizes, key, size, self.limit)

    def due(self, repositories: Sequence[Repository], manifest_digest: str) -> list[Repository]:
        """Those of `repositories` for which the stored manifest `manifest_digest` has to be
        learned (again): not yet, or so long ago that its sizes may have been pushed out
        (`limit` sizes learned since). Every GET and HEAD by digest reads a stored manifest,
        and parsing a 4 MiB one each time cost ~0.36 s."""
        due = []
        for repository in repositories:
            key = (*repository, manifest_digest)
            learned_at = self._manifests.get(key)
            if learned_at is not None and self._learned - learned_at < self.limit:
                self._manifests.move_to_end(key)
            else:
                due.append(repository)
        return due

    def learn_stored_manifest(
        self,
        repositories: Sequence[Repository],
        manifest_digest: str,
        descriptors: Sequence[tuple[str, int]],
    ) -> int:
        """`learn` the (digest, size) `descriptors` of the stored manifest `manifest_digest`
        (`pieces/manifest_facts.py` reads them) for those of `repositories`, which served it,
        that are `due`. Returns how many sizes it learned now (0 when it was learned before
        for each)."""
        due = self.due(repositories, manifest_digest)
        for repository in due:
            for digest, size in descriptors:
                self.learn(repository, digest, size)
        # Remembered as learned once all are: counted from before, its own sizes moved the
        # count, and with repositories x descriptors past `limit` every read parsed it again.
        for repository in due:
            _put(self._manifests, (*repository, manifest_digest), self._learned, MANIFESTS_LIMIT)
        return len(due) * len(descriptors)


def _put(table: OrderedDict[Key, Any], key: Key, value: Any, limit: int) -> None:
    """Set `key` as the most recent entry of `table`, dropping the least recent over `limit`."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)
