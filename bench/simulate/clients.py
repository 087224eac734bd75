"""The client on each host: it pulls the image through its local node, K blobs at a time.

The testbed's client is `skopeo copy` (bench/rollout.py), which copies up to 6 blobs at once
(containers/image's maxParallelDownloads); containerd's default is 3 (`--parallel`). The client
first gets the manifest (a request through the node to the registry: two round trips to the
origin, no bandwidth modelled), then asks for the blobs in order, starting the next one as soon
as one completes. Serving the manifest makes the node prefetch its blobs (peer/fetch/prefetch.py:
DEFAULT_CONCURRENCY at a time, in the manifest's order) unless the run says --no-prefetch.
A blob counts as done when the node holds all of it: the client streams it while it arrives,
and its copy over loopback and to disk are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.simulate.node import SimNode

SKOPEO_PARALLEL = 6


class Client:
    def __init__(
        self,
        node: SimNode,
        digests: list[str],
        parallel: int,
        on_done: Callable[[Client], None],
    ) -> None:
        if parallel < 1:
            raise ValueError("a client fetches at least one blob at a time")
        self.node = node
        self.digests = digests
        self.parallel = parallel
        self.on_done = on_done
        self.started_at: float | None = None
        self.done_at: float | None = None
        self._next = 0
        self._left = len(digests)

    def start(self) -> None:
        queue = self.node.world.queue
        self.started_at = queue.now
        queue.at(queue.now + 4 * self.node.world.latency, self._manifest)

    def _manifest(self, _arg: object) -> None:
        if self.node.world.prefetch:
            self.node.prefetch(self.digests)  # as the node does on serving a manifest
        for _ in range(min(self.parallel, len(self.digests))):
            self._ask_next()

    def _ask_next(self) -> None:
        if not self.node.alive or self._next >= len(self.digests):
            return
        digest = self.digests[self._next]
        self._next += 1
        self.node.request_blob(digest, self._blob_done)

    def _blob_done(self, now: float) -> None:
        if not self.node.alive:
            return
        self._left -= 1
        if self._left == 0:
            self.done_at = now
            self.on_done(self)
        else:
            self._ask_next()
