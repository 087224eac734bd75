"""Image-aware prefetch: a node that serves an image manifest starts the downloads of the blobs
it names, so a client that reads blobs one at a time finds the later ones already moving (or
stored) when it asks.

A prefetch is a client's blob GET that nobody waits for: it goes through the same
`FetchCoordinator.join` with the same registry (`?ns=`), repository and forwardable headers as
the manifest request, so the upstream (or, in a cluster, the blob's owner) applies exactly the
access rules the client would meet asking for each blob itself, and content fetched with
credentials is marked private as it would be. Nothing is served by a prefetch: a client that
later asks for a prefetched blob goes through the front's own access check.

Bounds, all fixed (memory never grows with what a manifest or an upstream says):
- a manifest is parsed once, before it is offered (`peer/fetch/manifest_reader.py`: off the
  event loop when it is large), and only the first MAX_BLOBS descriptors (config first,
  then layers in order) are taken; the `size` a descriptor states is not read here;
- at most `concurrency` prefetches run at once (the node's `--prefetch-downloads`): each worker
  holds one download until it is done;
- the rest wait in a queue of QUEUE_LIMIT blobs, in manifest order. Queued rather than dropped:
  the blobs beyond the first few are exactly the ones a one-blob-at-a-time client reaches last,
  what prefetch is for. What does not fit is skipped and counted; an entry that waited longer
  than MAX_WAIT is dropped when its turn comes (its client has most likely fetched the blob
  itself, and a short-lived token in its headers may have expired);
- manifests wait in a queue of MANIFEST_QUEUE_LIMIT (their facts, not their bodies); offers
  beyond are skipped.

`offer` never blocks and never raises into the request that made it: the blobs are picked
in the prefetcher's own task, after the client's answer. A prefetch that fails (a refusal, an
upstream or store error) is logged in one line and counted; no client sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from peer.fetch.download import BlobSource, Download, TooManyDownloads
from peer.fetch.manifests import IMAGE_MANIFEST_TYPES
from pieces.manifest_facts import ManifestFacts

log = logging.getLogger("pollen.prefetch")


MAX_BLOBS = 256  # descriptors taken from one manifest (the config counts as one)
QUEUE_LIMIT = 1024  # blobs waiting for a worker
MANIFEST_QUEUE_LIMIT = 16  # manifests waiting for their blobs to be queued
MAX_WAIT = 300.0  # seconds a queued blob may wait for a worker before it is dropped
DEFAULT_CONCURRENCY = 4


class InvalidManifest(ValueError):
    """A body served as an image manifest that cannot be read as one."""


@dataclass(frozen=True, slots=True)
class ImageBlobs:
    """The blobs an image manifest names, as far as they are taken."""

    digests: tuple[str, ...]  # the config, then the layers in order; each once
    invalid: int = 0  # descriptors that are not an object with a sha256 or sha512 digest
    beyond_limit: int = 0  # descriptors past MAX_BLOBS, not looked at


def image_blobs(media_type: str, facts: ManifestFacts, limit: int = MAX_BLOBS) -> ImageBlobs | None:
    """The config and layer digests of an OCI image manifest or a Docker schema2 manifest.

    Args:
        media_type: the Content-Type the manifest was served with (parameters ignored).
        facts: the manifest's facts (`pieces/manifest_facts.py`: its body parsed once).
        limit: at most this many descriptors are looked at (and at most MAX_FACT_BLOBS, which
            the facts keep); the rest are only counted.

    Returns:
        None when the body is not served as an image manifest (an index, a list, schema1,
        anything else): there is nothing to prefetch, and nothing wrong.

    Raises:
        InvalidManifest: served as an image manifest but not readable as one (not JSON, not
            an object, another `mediaType` inside, `layers` not a list).
    """
    served_as = media_type.partition(";")[0].strip().lower()
    if served_as not in IMAGE_MANIFEST_TYPES:
        return None
    if facts.error is not None:
        raise InvalidManifest(facts.error)
    says = facts.media_type_field
    if says is not None and says != served_as:
        raise InvalidManifest(f"served as {served_as} but says it is {says[:100]!r}")
    if not facts.layers_listed:
        raise InvalidManifest("no list of layers")
    taken = facts.blob_refs[: max(0, limit)]
    digests: dict[str, None] = {}  # ordered, each once (empty layers repeat in some images)
    invalid = 0
    for digest in taken:
        if digest is None:
            invalid += 1
        elif digest:
            digests[digest] = None
    return ImageBlobs(tuple(digests), invalid, facts.blob_count - len(taken))


class BlobJoiner(Protocol):
    """What the prefetcher asks of the fetch side (peer/fetch/coordinator.py)."""

    @property
    def active(self) -> Mapping[str, Download]: ...

    async def join(self, source: BlobSource) -> Download: ...


class HeldBlobs(Protocol):
    """What the prefetcher asks of the store."""

    def has_blob(self, digest: str) -> bool: ...


@dataclass
class PrefetchCounters:
    """What prefetch did; read by /metrics and the status document."""

    manifests: int = 0  # image manifests whose blobs were queued
    started: int = 0  # blob downloads a prefetch started or joined
    completed: int = 0  # of those, blobs that ended verified and stored
    failed: int = 0  # of those, refused or failed
    skipped: int = 0  # blobs not prefetched because of a bound (see the module docstring)
    invalid_manifests: int = 0  # served as image manifests, unreadable as ones


@dataclass(frozen=True, slots=True)
class _Offer:
    namespace: str | None
    name: str
    headers: Mapping[str, str]
    auth_key: str | None
    media_type: str
    facts: ManifestFacts


@dataclass(frozen=True, slots=True)
class _Queued:
    source: BlobSource
    since: float


class Prefetcher:
    """Starts the downloads of the blobs of the image manifests the front serves."""

    def __init__(
        self,
        store: HeldBlobs,
        downloads: BlobJoiner,
        concurrency: int = DEFAULT_CONCURRENCY,
        *,
        queue_limit: int = QUEUE_LIMIT,
        max_blobs: int = MAX_BLOBS,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"prefetch concurrency must be at least 1, not {concurrency}")
        self._store = store
        self._downloads = downloads
        self._concurrency = concurrency
        self._max_blobs = max_blobs
        self._offers, self._offers_out = trio.open_memory_channel[_Offer](MANIFEST_QUEUE_LIMIT)
        self._queue, self._queue_out = trio.open_memory_channel[_Queued](queue_limit)
        self._queued: set[str] = set()  # digests in the queue (each waits there once)
        self.manifests_waiting = 0  # offered, their blobs not queued yet
        self.running = 0
        self.counters = PrefetchCounters()

    @property
    def queued(self) -> int:
        return len(self._queued)

    def offer(
        self,
        namespace: str | None,
        name: str,
        headers: Mapping[str, str],
        auth_key: str | None,
        media_type: str,
        facts: ManifestFacts,
    ) -> None:
        """Prefetch the blobs of a manifest just served to a client, as that client (its
        registry, repository and forwardable headers); `facts` are the manifest's (its body
        parsed: `peer/fetch/manifest_reader.py`). Returns at once; never raises."""
        if media_type.partition(";")[0].strip().lower() not in IMAGE_MANIFEST_TYPES:
            return  # an index or a list: its client picks one manifest, and gets it next
        offer = _Offer(namespace, name, headers, auth_key, media_type, facts)
        try:
            self._offers.send_nowait(offer)
            self.manifests_waiting += 1
        except trio.WouldBlock:
            self.counters.skipped += 1
            log.info(
                "prefetch: %d manifests wait already; not prefetching the blobs of %s",
                MANIFEST_QUEUE_LIMIT,
                name[:200],
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Parse offered manifests and run the queued prefetches, until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._concurrency):
                nursery.start_soon(self._worker)
            task_status.started()
            async for offer in self._offers_out:
                self.manifests_waiting -= 1
                self._enqueue(offer)

    def _enqueue(self, offer: _Offer) -> None:
        name = offer.name[:200]
        try:
            blobs = image_blobs(offer.media_type, offer.facts, self._max_blobs)
        except InvalidManifest as exc:
            self.counters.invalid_manifests += 1
            log.info("prefetch: the manifest served for %s is not a usable one: %s", name, exc)
            return
        if blobs is None:
            return
        self.counters.manifests += 1
        skipped = blobs.invalid + blobs.beyond_limit
        if skipped:
            self.counters.skipped += skipped
            log.info(
                "prefetch: %s: %d descriptors without a usable digest, %d beyond the first %d: "
                "not prefetched",
                name,
                blobs.invalid,
                blobs.beyond_limit,
                self._max_blobs,
            )
        full = 0
        now = trio.current_time()
        for digest in blobs.digests:
            self._wanted_ahead(digest)
            if digest in self._queued or self._held_or_moving(digest):
                continue
            source = BlobSource(digest, offer.namespace, offer.name, offer.headers, offer.auth_key)
            try:
                self._queue.send_nowait(_Queued(source, now))
            except trio.WouldBlock:
                full += 1
                continue
            self._queued.add(digest)
        if full:
            self.counters.skipped += full
            log.info("prefetch: queue full, %d blobs of %s not prefetched", full, name)

    def _wanted_ahead(self, digest: str) -> None:
        """A download of `digest` in flight (for peers' Wants, say) now runs ahead of a client
        here too (`Download.prefetch_wants`; one whose client asked already is not ahead)."""
        moving = self._downloads.active.get(digest)
        if moving is not None:
            moving.prefetch_wants()

    def _held_or_moving(self, digest: str) -> bool:
        return self._store.has_blob(digest) or digest in self._downloads.active

    async def _worker(self) -> None:
        async for item in self._queue_out:
            self._queued.discard(item.source.digest)
            if trio.current_time() - item.since > MAX_WAIT:
                self.counters.skipped += 1
                log.info("prefetch: %s waited over %.0f s, dropped", item.source.digest, MAX_WAIT)
                continue
            self._wanted_ahead(item.source.digest)
            if self._held_or_moving(item.source.digest):
                # Its client (or another) got there first: that download is not duplicated,
                # and no prefetch slot waits on it.
                continue
            self.running += 1
            try:
                await self._prefetch(item.source)
            finally:
                self.running -= 1

    async def _prefetch(self, source: BlobSource) -> None:
        """One blob, through the path a client's GET takes; waits until it is done."""
        digest, name = source.digest, source.name[:200]
        self.counters.started += 1
        try:
            download = await self._downloads.join(source)
            download.prefetch_wants()  # ahead of its client until that asks (Download)
            await download.done.wait()
        except TooManyDownloads as exc:  # its client will ask, and be answered then
            self.counters.skipped += 1
            log.info("prefetch of %s for %s skipped: %s", digest, name, exc)
            return
        except Exception as exc:  # a bug: it ends this prefetch, never the worker
            self.counters.failed += 1
            log.exception("prefetch of %s for %s failed (a bug): %s", digest, name, exc)
            return
        if download.refusal is not None:
            self.counters.failed += 1
            log.info(
                "prefetch of %s for %s: refused with %d (its client will be asked)",
                digest,
                name,
                download.refusal.status,
            )
        elif download.error is not None:
            self.counters.failed += 1
            log.warning("prefetch of %s for %s failed: %s", digest, name, download.error)
        elif self._store.has_blob(digest):
            self.counters.completed += 1
        else:
            self.counters.failed += 1
            log.info("prefetch of %s for %s ended without the blob", digest, name)
