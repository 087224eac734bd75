"""Prometheus metrics of a node, read from the live objects at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from peer.body_parser import BodyParser
from peer.fetch.coordinator import FetchCoordinator
from peer.fetch.prefetch import Prefetcher
from peer.front.registry import ServedCounters
from peer.swarm.swarm import Swarm
from pieces.room import FOR_DISK, FOR_QUOTA, FOR_TTL, FOR_WATERMARK
from pieces.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _NodeCollector(Collector):
    def __init__(
        self,
        store: Store,
        downloads: FetchCoordinator,
        served: ServedCounters,
        swarm: Swarm | None,
        prefetch: Prefetcher | None,
        parser: BodyParser | None,
    ) -> None:
        self._store = store
        self._parser = parser
        self._downloads = downloads
        self._served = served
        self._swarm = swarm
        self._prefetch = prefetch

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats()
        yield GaugeMetricFamily(
            "pollen_store_bytes", "Bytes used by the piece store", value=stats.bytes_used
        )
        yield GaugeMetricFamily(
            "pollen_store_blobs", "Complete blobs in the store", value=stats.complete_blobs
        )
        yield from _eviction_metrics(self._store)
        yield GaugeMetricFamily(
            "pollen_downloads_in_flight",
            "Blob downloads in progress",
            value=len(self._downloads.active),
        )
        yield CounterMetricFamily(
            "pollen_upstream_bytes",
            "Blob bytes received from upstream registries",
            value=self._downloads.bytes_from_upstream,
        )
        yield CounterMetricFamily(
            "pollen_upstream_busy_retries",
            "Registry requests asked again after a busy answer (502, 503, 504), as a blob's owner",
            value=self._downloads.busy_retries,
        )
        yield CounterMetricFamily(
            "pollen_downloads_completed",
            "Blob downloads verified and stored",
            value=self._downloads.completed,
        )
        yield CounterMetricFamily(
            "pollen_downloads_failed", "Blob downloads that failed", value=self._downloads.failed
        )
        if self._swarm is not None:
            counters = self._swarm.counters
            peer_bytes = CounterMetricFamily(
                "pollen_peer_bytes", "Piece bytes exchanged with peers", labels=["direction"]
            )
            peer_bytes.add_metric(["in"], counters.bytes_from_peers)
            peer_bytes.add_metric(["out"], counters.bytes_to_peers)
            yield peer_bytes
            yield CounterMetricFamily(
                "pollen_bad_pieces",
                "Pieces from peers that failed their hash",
                value=counters.bad_pieces,
            )
            yield CounterMetricFamily(
                "pollen_false_piece_hashes",
                "Owners' piece hashes that the verified blob failed (a lying owner, or a "
                "registry that fed it wrong bytes)",
                value=counters.false_hashes,
            )
            yield CounterMetricFamily(
                "pollen_blobs_distrusted",
                "Blobs from peers that failed their sha256 (then from the registry for 10 min)",
                value=counters.blobs_distrusted,
            )
            yield CounterMetricFamily("pollen_peer_bans", "Peers banned", value=counters.bans)
            yield CounterMetricFamily(
                "pollen_upstream_fallbacks",
                "Blobs fetched from upstream because no owner was reachable",
                value=counters.upstream_fallbacks,
            )
            yield CounterMetricFamily(
                "pollen_peer_wasted_bytes",
                "Piece bytes received from peers that were not needed (duplicates, late)",
                value=counters.wasted_bytes,
            )
            yield CounterMetricFamily(
                "pollen_uploads_cancelled",
                "Queued uploads the requester cancelled before they were sent",
                value=counters.uploads_cancelled,
            )
            yield GaugeMetricFamily(
                "pollen_members_alive",
                "Live members known to this node, itself included",
                value=len(self._swarm.membership.alive_ids()),
            )
        served = CounterMetricFamily(
            "pollen_served_blob_bytes", "Blob bytes sent to clients", labels=["source"]
        )
        served.add_metric(["cache"], self._served.blob_bytes_from_cache)
        served.add_metric(["download"], self._served.blob_bytes_while_downloading)
        yield served
        if self._prefetch is not None:
            yield from _prefetch_metrics(self._prefetch)
        if self._parser is not None:
            yield CounterMetricFamily(
                "pollen_bodies_parsed_in_worker",
                "Large manifests parsed in the node's worker process (off the event loop)",
                value=self._parser.parsed_in_worker,
            )
            yield CounterMetricFamily(
                "pollen_parser_worker_failures",
                "Parses whose worker process died, or took too long and was killed",
                value=self._parser.worker_failures,
            )


def _eviction_metrics(store: Store) -> Iterator[Metric]:
    blobs = CounterMetricFamily(
        "pollen_evictions",
        "Blobs and partials evicted from the store, by reason (disk-full, cache-size, "
        "disk-watermark, ttl)",
        labels=["reason"],
    )
    size = CounterMetricFamily(
        "pollen_evicted_bytes", "Bytes freed by eviction, by reason", labels=["reason"]
    )
    for reason in (FOR_DISK, FOR_QUOTA, FOR_WATERMARK, FOR_TTL):
        count, freed = store.evictions.get(reason, (0, 0))
        blobs.add_metric([reason], count)
        size.add_metric([reason], freed)
    yield blobs
    yield size


def _prefetch_metrics(prefetch: Prefetcher) -> Iterator[Metric]:
    counters = prefetch.counters
    yield CounterMetricFamily(
        "pollen_prefetch_manifests",
        "Image manifests served whose blobs were queued for prefetch",
        value=counters.manifests,
    )
    yield CounterMetricFamily(
        "pollen_prefetch_started",
        "Blob downloads started (or joined) by prefetch",
        value=counters.started,
    )
    yield CounterMetricFamily(
        "pollen_prefetch_completed",
        "Prefetched blobs verified and stored",
        value=counters.completed,
    )
    yield CounterMetricFamily(
        "pollen_prefetch_failed",
        "Prefetches refused by the registry or failed",
        value=counters.failed,
    )
    yield CounterMetricFamily(
        "pollen_prefetch_skipped",
        "Blobs not prefetched because of a bound (queue full, over the per-manifest limit, "
        "no sha256 or sha512 digest, waited too long)",
        value=counters.skipped,
    )
    yield CounterMetricFamily(
        "pollen_prefetch_invalid_manifests",
        "Bodies served as image manifests that could not be read as ones",
        value=counters.invalid_manifests,
    )
    yield GaugeMetricFamily(
        "pollen_prefetch_running", "Prefetch downloads running now", value=prefetch.running
    )
    yield GaugeMetricFamily(
        "pollen_prefetch_queued", "Blobs waiting for a prefetch slot", value=prefetch.queued
    )


class NodeMetrics:
    def __init__(
        self,
        store: Store,
        downloads: FetchCoordinator,
        served: ServedCounters,
        swarm: Swarm | None,
        prefetch: Prefetcher | None = None,
        parser: BodyParser | None = None,
    ) -> None:
        self._registry = CollectorRegistry()
        collector = _NodeCollector(store, downloads, served, swarm, prefetch, parser)
        self._registry.register(collector)

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE, generate_latest(self._registry)
