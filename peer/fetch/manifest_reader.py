"""A manifest's facts (`pieces/manifest_facts.py`) for the front, fetches and prefetch: each
body parsed once (off the event loop when it is large: `peer/body_parser.py`), and the
facts of recent manifests kept by digest, so that a manifest read again and again (every
GET by digest is followed by a prefetch offer) is not parsed again.

The cache is keyed by the manifest's digest, which its callers have checked against the body
(a fetch by its digest, the store on the way in), and bounded by the descriptors and
references it holds, whatever the manifests hold.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from peer.body_parser import BodyParser
from pieces.manifest_facts import ManifestFacts, read_facts
from pieces.store import Store

CACHED_ITEMS = 64 * 1024  # descriptors and references kept in all (~150 bytes each)


def _weight(facts: ManifestFacts) -> int:
    return 1 + len(facts.descriptors) + len(facts.blob_refs)


class ManifestReader:
    """Facts of manifests by digest, and the sizes of stored manifests learned from them."""

    def __init__(self, parser: BodyParser, cached_items: int = CACHED_ITEMS) -> None:
        self.parser = parser
        self._cached_items = cached_items
        self._cache: OrderedDict[str, ManifestFacts] = OrderedDict()
        self._parsing: dict[str, trio.Event] = {}  # digests being parsed now
        self._weight = 0

    async def facts(self, digest: str, body: bytes) -> ManifestFacts:
        """The facts of `body`, whose digest the caller has checked is `digest`.

        Raises:
            ParserFailed, ParserBusy: as `BodyParser.parse`.
        """
        while True:
            known = self._cache.get(digest)
            if known is not None:
                self._cache.move_to_end(digest)
                return known
            parsing = self._parsing.get(digest)
            if parsing is None:
                break
            # One parse per digest at a time: N clients of one large manifest cost one parse
            # in the worker, not N (a review's find). Ended: cached, or failed (try ours).
            await parsing.wait()
        parsing = self._parsing[digest] = trio.Event()
        try:
            facts = await self.parser.parse(read_facts, body)
        finally:
            del self._parsing[digest]
            parsing.set()
        self._remember(digest, facts)
        return facts

    def cached(self, digest: str) -> ManifestFacts | None:
        """The facts of `digest` when they are at hand (no body needed)."""
        return self._cache.get(digest)

    async def stored_facts(self, store: Store, digest: str, body: bytes) -> ManifestFacts:
        """The facts of a manifest in `store` (its body `body`), its sizes learned for the
        repositories that served it when they are not learned already (after a restart,
        clients resolve a tag with a HEAD, which stores nothing, then GET the manifest by
        digest from the store).

        Raises:
            ParserFailed, ParserBusy: as `BodyParser.parse`.
        """
        facts = await self.facts(digest, body)
        store.learn_manifest_sizes(digest, facts.descriptors)  # only where due: it checks
        return facts

    def _remember(self, digest: str, facts: ManifestFacts) -> None:
        weight = _weight(facts)
        if weight > self._cached_items:
            return
        old = self._cache.pop(digest, None)
        if old is not None:
            self._weight -= _weight(old)
        self._cache[digest] = facts
        self._weight += weight
        while self._weight > self._cached_items:
            _, dropped = self._cache.popitem(last=False)
            self._weight -= _weight(dropped)
