"""Who fetches a blob: one download per blob per node, and the one place that decides how.

For a client's request: the swarm first (the blob's owner fetches it from the upstream once
for the whole cluster); when this node is the owner, or no owner can be reached, or the owner
holds the blob only from other registries, the upstream, for whatever the swarm did not
deliver. For a peer's Want (this node owns the blob): a node that holds it, else the upstream.
Fetching as the owner, for the cluster, a busy registry is asked again before the download
fails (peer/fetch/busy_registry.py).

A download runs in the node's nursery, not in a request's task, so a client that disconnects
never cancels it: the bytes still land in the store for the other clients and for the cache.
An unexpected exception in a fetch is a bug: it is logged with its traceback and ends that
download (its clients get a 500), never the node.

The pieces are built in order, with no cycle: the `DownloadTable` and the `UpstreamFetcher`
first, then the swarm (given `OwnerUpstream`, its narrow view of them), then the
`FetchCoordinator` over all three.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import trio

from peer.fetch.download import BlobSource, Download, TooManyDownloads
from peer.fetch.upstream_fetch import UpstreamFetcher
from peer.swarm.errors import OwnedHere, OwnerUnavailable
from peer.upstream.errors import UpstreamError
from pieces.partial import BlobFailed, DiskFull, NoRoom, PartialBlob, StoreError
from pieces.store import Store

log = logging.getLogger("pollen.download")

Fetch = Callable[[Download, dict[str, str]], Awaitable[None]]
# Downloads in flight at once on a node. Each holds a registry socket, a partial file and
# receive buffers (~2 MiB), and runs on when its client hangs up (below): a client that asked
# for made-up digests at a registry it runs, which trickled, hanging up each time, left 750
# running (1.6 GB, 2,250 file descriptors; a helper's probe). Past it a new download is
# refused: a client gets a 502 (containerd then asks its next host), a peer's Want a 503 (the
# peer fetches the blob itself), a prefetch is skipped.
MAX_DOWNLOADS = 128
# One asker (a member, by its Wants; a client on another host, by its address) may start at
# most this share of them: one alone filled the node's 128, and every other pull got a 502 or
# a 503 until they ended (an attacker's review, 2026-12-06). Joining a download in flight is
# not starting one. This host's own clients (loopback: its runtime), prefetch and preheat have
# no share: they are the node's own, and a process on this host has easier ways to hurt it.
ASKER_SHARE = 4

# Failures with a known cause: logged in one line. Anything else is a bug: with a traceback.
EXPECTED_FAILURES = (UpstreamError, StoreError, OSError, BlobFailed)


class DownloadTable:
    """The node's blob downloads in flight, one per digest, shared by all who want it."""

    def __init__(self, store: Store, nursery: trio.Nursery) -> None:
        self._store = store
        self._nursery = nursery
        self.active: dict[str, Download] = {}
        self.completed = 0
        self.failed = 0

    def held_back(self, download: Download) -> bool:
        """Does `download` keep to part of its registry flows (chunks.UNREAD_SHARE) and stay
        out of the swarm's peer limit? While it runs ahead of its client
        (`Download.ahead_of_client`) and a client here reads another blob now, as one that
        reads an image's blobs in order does. A client that reads nothing holds nothing back:
        its pull ended or was cancelled, or it skipped the blob (its runtime holds it), and
        the other hosts' clients may wait for this one."""
        return download.ahead_of_client and any(
            other.clients for other in self.active.values() if other is not download
        )

    async def join(self, source: BlobSource, fetch: Fetch, starter: str | None = None) -> Download:
        """The download of the blob: the one in flight, or a new one run by `fetch`, started
        by `starter` (None: by the node's own, with no share).

        A download that another client started with other credentials is joined only once the
        upstream accepted that client; if it refused, this client gets its own try.

        Raises:
            TooManyDownloads: a new download would be one past MAX_DOWNLOADS, or past the
                share of them `starter` may start.
        """
        digest, auth_key = source.digest, source.auth_key
        while True:
            download = self.active.get(digest)
            if download is None:
                if len(self.active) >= MAX_DOWNLOADS:
                    raise TooManyDownloads(MAX_DOWNLOADS)
                share = max(1, MAX_DOWNLOADS // ASKER_SHARE)
                if starter is not None and self.started_by(starter) >= share:
                    raise TooManyDownloads(share, share=True)
                download = Download(digest, source.namespace, source.name, auth_key, starter)
                self.active[digest] = download
                self._nursery.start_soon(self._run, download, fetch, dict(source.headers))
                return download
            if download.auth_key == auth_key:
                return download
            await download.ready.wait()
            if download.partial is not None and download.error is None:
                return download
            await download.done.wait()

    def started_by(self, starter: str) -> int:
        """Downloads in flight that `starter` started."""
        return sum(1 for download in self.active.values() if download.starter == starter)

    async def _run(self, download: Download, fetch: Fetch, headers: dict[str, str]) -> None:
        try:
            await fetch(download, headers)
            if download.partial is not None:
                self.completed += 1
        except Exception as exc:
            self.failed += 1
            download.failed(exc)
            partial = download.partial
            if partial is not None:
                partial.fail(exc)
                if isinstance(exc, DiskFull | NoRoom):
                    # Kept for a resume, it would keep the disk full and fail every later
                    # blob; the next request for this one starts over once there is room.
                    async with partial.write_lock:
                        partial.discard_sync()
            if isinstance(exc, EXPECTED_FAILURES):
                log.warning("download of %s failed: %s", download.digest, exc)
            else:
                log.exception("download of %s failed (a bug)", download.digest)
        finally:
            download.finished()
            del self.active[download.digest]
            partial = download.partial
            if partial is not None:
                if not partial.verified and partial.error is None:
                    # Ended without the blob (a refusal mid-resume): wake its readers.
                    partial.fail(BlobFailed(f"download of {download.digest} ended unfinished"))
                self._store.release_partial(partial)


class OwnerUpstream:
    """What the swarm may ask of the fetch side: a download of a blob for its peers (shared
    with this node's own clients), and whether one runs from the upstream now."""

    def __init__(self, table: DownloadTable, fetcher: UpstreamFetcher) -> None:
        self._table = table
        self._fetcher = fetcher

    async def join_for_peer(self, source: BlobSource, holders: Fetch, peer: bytes) -> Download:
        # A node that joined and ranks first is asked for blobs the previous owner has: from
        # it, not the registry again. Held-only Wants start nothing where they land, so two
        # nodes never wait on each other here.
        async def fetch(download: Download, headers: dict[str, str]) -> None:
            await swarm_then_upstream(holders, self._fetcher, download, headers)

        return await self._table.join(source, fetch, f"member {peer.hex()}")

    def in_flight(self, digest: str) -> Download | None:
        download = self._table.active.get(digest)
        return download if download is not None and self._fetcher.fetching(digest) else None

    def blobs(self) -> int:
        return self._fetcher.blobs()

    def blobs_wanted_now(self) -> int:
        table = self._table
        return sum(
            1
            for digest in self._fetcher.digests()
            if (download := table.active.get(digest)) is None or not table.held_back(download)
        )

    def streams(self) -> int:
        return self._fetcher.streams

    async def fetch_runs(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob,
        runs: list[tuple[int, int]],
    ) -> None:
        await self._fetcher.fetch_runs(download, headers, partial, runs)


class SwarmSource(Protocol):
    """What the coordinator asks of the swarm (peer/swarm/swarm.py)."""

    async def fetch(self, download: Download, headers: Mapping[str, str]) -> None:
        """Fill `download` from the swarm; raises OwnerUnavailable."""
        ...


class FetchCoordinator:
    """The front's way to a blob: join the download in flight or start one."""

    def __init__(
        self, table: DownloadTable, fetcher: UpstreamFetcher, swarm: SwarmSource | None
    ) -> None:
        self._table = table
        self._fetcher = fetcher
        self._swarm = swarm

    @property
    def active(self) -> dict[str, Download]:
        return self._table.active

    @property
    def completed(self) -> int:
        return self._table.completed

    @property
    def failed(self) -> int:
        return self._table.failed

    @property
    def bytes_from_upstream(self) -> int:
        return self._fetcher.bytes_from_upstream

    @property
    def busy_retries(self) -> int:
        return self._fetcher.busy_retries

    async def join(self, source: BlobSource, starter: str | None = None) -> Download:
        """The download of `source`'s blob (swarm first, then the upstream); `starter`: who
        would start it (None: the node's own, with no share of the downloads)."""
        return await self._table.join(source, self._fetch, starter)

    async def _fetch(self, download: Download, headers: dict[str, str]) -> None:
        if self._swarm is None:
            await self._fetcher.fetch(download, headers)
        else:
            await swarm_then_upstream(self._swarm.fetch, self._fetcher, download, headers)


async def swarm_then_upstream(
    swarm: Fetch, fetcher: UpstreamFetcher, download: Download, headers: dict[str, str]
) -> None:
    """Fill `download` by `swarm`; when it raises OwnerUnavailable (we own the blob now, or
    nobody else could be reached or has it), from the upstream, continuing from whatever
    pieces the swarm delivered (also when the owner refused it: its refusal may be a lie, the
    upstream's answer is the client's). As the owner (OwnedHere), for the cluster: a busy
    registry is asked again while the nodes that asked us wait (peer/fetch/busy_registry.py);
    after an owner's refusal, once: the owner asked again already."""
    try:
        await swarm(download, headers)
        return
    except OwnerUnavailable as exc:
        log.info("fetching %s from the upstream: %s", download.digest, exc)
        owned = isinstance(exc, OwnedHere)
    await fetcher.fetch(download, headers, for_the_cluster=owned)
