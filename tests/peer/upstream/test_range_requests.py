"""The upstream fetcher's Range requests for the gaps of a partial blob, against a fake
registry on loopback: how many go at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from peer.fetch.download import Download
from peer.fetch.upstream_fetch import RANGES_AT_ONCE, UpstreamFetcher
from peer.upstream.client import UpstreamConfig, Upstreams
from pieces.store import Store
from tests.peer.fake_registry import FakeRegistry

PIECE = 64 * 1024


class CountingFetcher(UpstreamFetcher):
    """Counts the Range requests in flight (a test's subclass: production has no hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open = self.most_open = 0

    async def _fetch_range(self, *args: Any, **kwargs: Any) -> Any:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            return await super()._fetch_range(*args, **kwargs)
        finally:
            self.open -= 1


async def test_range_requests_for_one_blob_share_their_slots(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A takeover hands gaps to the upstream more than once: each hand-off must not open
    # RANGES_AT_ONCE more connections (and receive buffers) of its own.
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    registry.pace = 0.01
    data = os.urandom(12 * PIECE)
    digest = registry.add_blob(data)
    store = Store(tmp_path)
    partial = await store.open_partial(digest, len(data), piece_size=PIECE)
    for index in range(1, 12, 2):  # pieces 0, 2, 4, ... missing: six gaps
        partial.write_sync(index * PIECE, [data[index * PIECE : (index + 1) * PIECE]])
    fetcher = CountingFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    download = Download(digest, None, "org/app", None)
    gaps = [(i * PIECE, (i + 1) * PIECE) for i in range(0, 12, 2)]
    with trio.fail_after(20):
        async with trio.open_nursery() as both:
            both.start_soon(fetcher.fetch_runs, download, {}, partial, gaps[:3])
            both.start_soon(fetcher.fetch_runs, download, {}, partial, gaps[3:])
    assert fetcher.most_open == RANGES_AT_ONCE
    assert partial.missing_runs() == []
    store.release_partial(partial)
