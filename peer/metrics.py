"""Prometheus metrics of a node, read from the live objects at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from peer.downloads import Downloads
from pieces.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _NodeCollector(Collector):
    def __init__(self, store: Store, downloads: Downloads) -> None:
        self._store = store
        self._downloads = downloads

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats()
        yield GaugeMetricFamily(
            "pollen_store_bytes", "Bytes used by the piece store", value=stats.bytes_used
        )
        yield GaugeMetricFamily(
            "pollen_store_blobs", "Complete blobs in the store", value=stats.complete_blobs
        )
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
            "pollen_downloads_completed",
            "Blob downloads verified and stored",
            value=self._downloads.completed,
        )
        yield CounterMetricFamily(
            "pollen_downloads_failed", "Blob downloads that failed", value=self._downloads.failed
        )


class NodeMetrics:
    def __init__(self, store: Store, downloads: Downloads) -> None:
        self._registry = CollectorRegistry()
        self._registry.register(_NodeCollector(store, downloads))

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE, generate_latest(self._registry)
