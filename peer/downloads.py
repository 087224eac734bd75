"""One upstream download per blob per node, shared by every request for that blob.

A `Download` runs in the node's nursery, not in a request's task, so a client that disconnects
never cancels it: the bytes still land in the store for the other clients and for the cache.
Bytes are written to the partial blob as they arrive and readers are woken at once, so clients
stream the blob while it downloads.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import trio

from peer.upstream import (
    FORWARDED_ERROR_HEADERS,
    UpstreamError,
    Upstreams,
    pick_headers,
)
from pieces.partial import PartialBlob
from pieces.store import Store

log = logging.getLogger("pollen.download")

# Chunks that arrive while the writer thread is busy are written together in its next call;
# past this many pending bytes the receiver waits (bounds memory per download).
MAX_PENDING_BYTES = 8 * 1024 * 1024
ERROR_BODY_LIMIT = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True, slots=True)
class UpstreamRefusal:
    """A 4xx answer from the upstream, passed to the client as it came (401 + WWW-Authenticate)."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(eq=False)
class Download:
    """The state of one blob's upstream download, as its clients see it."""

    digest: str
    namespace: str | None
    name: str
    auth_key: str | None
    started: float = field(default_factory=time.monotonic)
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    partial: PartialBlob | None = None
    refusal: UpstreamRefusal | None = None
    error: Exception | None = None
    bytes_from_upstream: int = 0
    clients: int = 0

    @property
    def size(self) -> int | None:
        return self.partial.layout.size if self.partial is not None else None


class _ChunkQueue:
    """Chunks from the receiver to the writer; the writer takes all that is pending at once."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pending = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    async def put(self, chunk: bytes) -> None:
        while self._pending >= MAX_PENDING_BYTES:
            await self._lot.park()
        self._chunks.append(chunk)
        self._pending += len(chunk)
        self._lot.unpark_all()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    async def take_all(self) -> list[bytes] | None:
        """Everything pending (waits for at least one chunk); None once closed and drained."""
        while not self._chunks:
            if self._closed:
                return None
            await self._lot.park()
        chunks, self._chunks, self._pending = self._chunks, [], 0
        self._lot.unpark_all()
        return chunks


class Downloads:
    """The node's table of blob downloads in flight."""

    def __init__(self, store: Store, upstreams: Upstreams, nursery: trio.Nursery) -> None:
        self._store = store
        self._upstreams = upstreams
        self._nursery = nursery
        self.active: dict[str, Download] = {}
        self.bytes_from_upstream = 0
        self.completed = 0
        self.failed = 0

    async def join(
        self,
        digest: str,
        namespace: str | None,
        name: str,
        headers: Mapping[str, str],
        auth_key: str | None,
    ) -> Download:
        """The download of `digest`: the one in flight, or a new one started for this client.

        A download that another client started with other credentials is joined only once the
        upstream accepted that client; if it refused, this client gets its own try.
        """
        while True:
            download = self.active.get(digest)
            if download is None:
                download = Download(digest, namespace, name, auth_key)
                self.active[digest] = download
                self._nursery.start_soon(self._run, download, dict(headers))
                return download
            if download.auth_key == auth_key:
                return download
            await download.ready.wait()
            if download.partial is not None and download.error is None:
                return download
            await download.done.wait()

    async def _run(self, download: Download, headers: dict[str, str]) -> None:
        try:
            await self._fetch(download, headers)
            if download.partial is not None:
                self.completed += 1
        except Exception as exc:
            self.failed += 1
            download.error = exc
            if download.partial is not None:
                download.partial.fail(exc)
            log.warning("download of %s failed: %s", download.digest, exc)
        finally:
            download.ready.set()
            download.done.set()
            del self.active[download.digest]
            if download.partial is not None:
                self._store.release_partial(download.partial)

    async def _fetch(self, download: Download, headers: dict[str, str]) -> None:
        digest = download.digest
        partial: PartialBlob | None = None
        size_on_disk = self._store.partial_size_on_disk(digest)
        if size_on_disk is not None:
            partial = await self._store.open_partial(digest, size_on_disk)
        offset = partial.first_missing_offset() if partial is not None else 0
        request_headers = dict(headers)
        if offset:
            request_headers["range"] = f"bytes={offset}-"
        path = f"/v2/{download.name}/blobs/{digest}"
        async with self._upstreams.open("GET", download.namespace, path, request_headers) as resp:
            base = self._upstreams.base_url(download.namespace)
            if 400 <= resp.status_code < 500 and resp.status_code != 416:
                body = await self._upstreams.read_body(resp, ERROR_BODY_LIMIT)
                download.refusal = UpstreamRefusal(
                    resp.status_code, pick_headers(resp.headers, FORWARDED_ERROR_HEADERS), body
                )
                if partial is not None:
                    self._store.release_partial(partial)
                return
            start, size = _body_extent(resp, base)
            if partial is not None and (partial.layout.size != size or start > offset):
                log.info("upstream size of %s changed; starting over", digest)
                partial.discard_sync()
                self._store.release_partial(partial)
                partial = None
            if partial is None:
                partial = await self._store.open_partial(digest, size)
            if download.auth_key is not None:
                # Before any other client can see it: later readers must pass the access check.
                self._store.mark_private(digest)
            download.partial = partial
            download.ready.set()
            if offset:
                log.info("resuming %s at byte %d of %d", digest, start, size)
            await self._pump(download, resp, partial, start, base)
        await trio.to_thread.run_sync(partial.finalize_sync)
        partial.notify()
        log.info("stored %s (%d bytes, %.2fs)", digest, size, time.monotonic() - download.started)

    async def _pump(
        self, download: Download, resp: httpx.Response, partial: PartialBlob, start: int, base: str
    ) -> None:
        """Receive the body in one task and write it from another, so the two overlap.

        When the upstream breaks off, what was received is still written first, so a resume
        starts as late as possible.
        """
        queue = _ChunkQueue()
        size = partial.layout.size
        broke_off: UpstreamError | None = None
        write_error: Exception | None = None

        async def receive() -> None:
            nonlocal broke_off
            try:
                async for chunk in resp.aiter_raw():
                    await queue.put(chunk)
            except httpx.HTTPError as exc:
                broke_off = UpstreamError(base, f"broke off the blob: {exc!r}")
            finally:
                queue.close()

        offset = start
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            try:
                while (chunks := await queue.take_all()) is not None:
                    received = sum(len(c) for c in chunks)
                    if offset + received > size:
                        raise UpstreamError(base, f"sent more than the {size} bytes it announced")
                    await trio.to_thread.run_sync(partial.write_sync, offset, chunks)
                    offset += received
                    download.bytes_from_upstream += received
                    self.bytes_from_upstream += received
                    partial.notify()
            except Exception as exc:  # raised below, outside the nursery: no exception group
                write_error = exc
                nursery.cancel_scope.cancel()
        if write_error is not None:
            raise write_error
        if broke_off is not None:
            raise broke_off
        if offset != size:
            raise UpstreamError(base, f"closed the connection after {offset} of {size} bytes")


def _body_extent(resp: httpx.Response, base: str) -> tuple[int, int]:
    """(offset of the first body byte, total blob size) of a 200 or 206 blob answer."""
    if resp.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
        if match is None:
            raise UpstreamError(base, "answered 206 without a valid Content-Range")
        return int(match.group(1)), int(match.group(3))
    if resp.status_code != 200:
        raise UpstreamError(base, f"answered {resp.status_code} {resp.reason_phrase}")
    length = resp.headers.get("content-length")
    if length is None or not length.isdigit():
        raise UpstreamError(base, "sent a blob without Content-Length")
    return 0, int(length)
