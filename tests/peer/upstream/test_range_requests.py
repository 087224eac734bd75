"""The upstream fetcher's Range requests, against a fake registry on loopback: for the gaps of
a partial blob, how many go at once; a large blob fetched whole, in parts."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from peer.fetch.download import Download
from peer.fetch.upstream_fetch import (
    PARTS_MIN_PIECES,
    RANGES_AT_ONCE,
    WHOLE_PARTS,
    UpstreamFetcher,
    whole_parts,
)
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.errors import UpstreamError
from pieces.store import Store
from tests.peer.fake_registry import FakeRegistry

PIECE = 64 * 1024
# A blob large enough for parts, and its first part's end (pieces of PIECE: the store's
# largest, and the blob has more than PIECES_PER_BLOB of them).
LARGE = 300 * PIECE + 99


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


@pytest.fixture
async def registry(nursery: trio.Nursery) -> FakeRegistry:
    fake = FakeRegistry()
    await nursery.start(fake.serve)
    return fake


async def fetch_whole(
    tmp_path: Path, registry: FakeRegistry, data: bytes, *, described: bool = True
) -> CountingFetcher:
    """A blob of `data` at the registry, fetched whole into an empty store (its size given
    by a manifest when `described`) and stored right."""
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=PIECE)
    if described:
        store.descriptor_sizes.learn(digest, len(data))
    fetcher = CountingFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    with trio.fail_after(20):
        await fetcher.fetch(Download(digest, None, "org/app", None), {})
    assert store.complete_path(digest).read_bytes() == data
    return fetcher


def blob_gets(registry: FakeRegistry) -> list[str | None]:
    """The Range header of every blob GET the registry answered, in order."""
    return [r for m, p, r in registry.requests if m == "GET" and "/blobs/" in p]


def part_ranges(size: int) -> list[str]:
    """The Range headers of the parts of a blob of `size` bytes in PIECE pieces (the last
    one open-ended: the form every registry supports)."""
    count = -(-size // PIECE)
    bounds = [0] + [end * PIECE for _, end in whole_parts(count)[:-1]]
    return [f"bytes={a}-{b - 1}" for a, b in itertools.pairwise(bounds)] + [f"bytes={bounds[-1]}-"]


def test_a_large_blob_has_parts_and_a_small_one_none() -> None:
    assert whole_parts(PARTS_MIN_PIECES - 1) == [(0, PARTS_MIN_PIECES - 1)]
    parts = whole_parts(300)
    assert len(parts) == WHOLE_PARTS
    assert parts[0][0] == 0 and parts[-1][1] == 300
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))  # no gap, no overlap
    assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


async def test_a_large_blob_whose_size_a_manifest_gives_comes_in_parts_at_once(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # An owner's one flow from the registry shares its downlink with the flows of the blobs
    # it takes from peers. The first part is asked alone; the others once its answer shows
    # the registry honours Range. Each byte still comes once.
    registry.pace = 0.002
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    gets = blob_gets(registry)
    assert gets[0] == part_ranges(LARGE)[0]  # asked first
    assert sorted(r or "" for r in gets) == sorted(part_ranges(LARGE))
    assert registry.most_blob_gets_open == WHOLE_PARTS
    assert fetcher.bytes_from_upstream == LARGE


async def test_a_blob_of_unknown_size_comes_in_one_answer(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # No manifest gave its size: no part boundary to ask for before the answer.
    await fetch_whole(tmp_path, registry, os.urandom(LARGE), described=False)
    assert blob_gets(registry) == [None]


async def test_a_small_blob_comes_in_one_answer(tmp_path: Path, registry: FakeRegistry) -> None:
    await fetch_whole(tmp_path, registry, os.urandom((PARTS_MIN_PIECES - 1) * PIECE))
    assert blob_gets(registry) == [None]


async def test_a_registry_that_ignores_range_gives_the_blob_in_its_first_answer(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The first part answered with the whole blob (200): taken whole, no other part asked.
    registry.ignore_range = True
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    assert blob_gets(registry) == [part_ranges(LARGE)[0]]
    assert fetcher.bytes_from_upstream == LARGE


async def test_parts_the_registry_will_not_answer_beside_the_first_come_after_it(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The first Range honoured, the others answered with the whole blob: each is dropped at
    # its headers and the rest asked one range at a time after the first part (the next
    # answer, the whole blob again, starts the download over: still each byte once stored).
    registry.ranges_honoured = 1
    await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    gets = blob_gets(registry)
    # (The second part may be stopped before it is sent, once the first refusal is in.)
    assert gets[0] == part_ranges(LARGE)[0] and WHOLE_PARTS <= len(gets) <= WHOLE_PARTS + 1


async def test_a_first_part_answered_from_another_byte_fails_the_fetch(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # Asked from byte 0, answered 206 from byte 5: nothing of it is stored as the blob's.
    registry.range_shift = 5
    with pytest.raises(UpstreamError, match="from byte 5, not 0"):
        await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    left = Store(tmp_path).stats()  # what the failed fetch left on disk
    assert (left.complete_blobs, left.partial_blobs, left.bytes_used) == (0, 0, 0)
