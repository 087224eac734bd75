"""The state of one blob's fetch, as its clients see it; changed only through its methods.

Fetchers (the swarm's and the upstream's) report through `opened`, `refused` and the byte
counters; the front counts its clients with `serving()`. Readers wait on `ready` (a partial to
stream, a refusal, or an error) and `done`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import trio

from peer.upstream.errors import UpstreamError, UpstreamRefusal
from pieces.partial import PartialBlob


@dataclass(frozen=True, eq=False)
class BlobSource:
    """Which blob to fetch, from where, as whom: what a client (or a peer's client) asked."""

    digest: str
    namespace: str | None  # `?ns=`: which registry (None: the default upstream)
    name: str  # the repository
    headers: Mapping[str, str]  # the client's forwardable headers (its credentials)
    auth_key: str | None  # a key for the credentials in `headers` (None: anonymous)


@dataclass(eq=False)
class Download:
    digest: str
    namespace: str | None
    name: str
    auth_key: str | None
    # Who started it, for the share of MAX_DOWNLOADS one asker may hold (coordinator.py);
    # None: no share (this host's own clients, prefetch, preheat).
    starter: str | None = None
    started: float = field(default_factory=trio.current_time)
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    partial: PartialBlob | None = None
    refusal: UpstreamRefusal | None = None
    error: Exception | None = None
    bytes_from_upstream: int = 0
    bytes_from_peers: int = 0
    clients: int = 0
    # This node's prefetch asked for the blob (a client here pulls its image), and whether a
    # client here has asked for it since (a GET its access allowed). In between the download
    # runs ahead of its client: it keeps to part of its registry flows (chunks.UNREAD_SHARE)
    # and holds none of this node's peers back (peer/swarm/fetch.py, peers_while_owning), so
    # the blobs clients read now come first. A download for peers' Wants only, or for a
    # client that asked first, is never ahead.
    prefetched: bool = False
    read_by_client: bool = False

    @property
    def size(self) -> int | None:
        return self.partial.layout.size if self.partial is not None else None

    def started_for(self, source: BlobSource, registry_of: Callable[[str | None], str]) -> bool:
        """Is this the download `source` would start: its credentials, its registry
        (`registry_of` a namespace's base URL)? Else it is another client's, joined."""
        return self.auth_key == source.auth_key and registry_of(self.namespace) == registry_of(
            source.namespace
        )

    def opened(self, partial: PartialBlob) -> None:
        """The blob's partial exists: clients may stream it."""
        self.partial = partial
        self.ready.set()

    def adopted(self, partial: PartialBlob) -> None:
        """A partial this download now owns (to release), before clients may read it."""
        self.partial = partial

    def refused(self, refusal: UpstreamRefusal) -> None:
        """The upstream (or the owner, for it) refused this download's client."""
        self.refusal = refusal
        self.ready.set()

    def failed(self, error: Exception) -> None:
        self.error = error

    def finished(self) -> None:
        self.ready.set()
        self.done.set()

    @property
    def ahead_of_client(self) -> bool:
        """Prefetched for a client here that has not asked for the blob yet."""
        return self.prefetched and not self.read_by_client

    def prefetch_wants(self) -> None:
        """This node's prefetch asked for the blob."""
        self.prefetched = True

    def client_reads(self) -> None:
        """A client here asked for the blob and may have it: registry flows kept back for
        it may open (they wait on the partial)."""
        if not self.read_by_client:
            self.read_by_client = True
            if self.partial is not None:
                self.partial.notify()

    def received_from_peers(self, count: int) -> None:
        self.bytes_from_peers += count

    def received_from_upstream(self, count: int) -> None:
        self.bytes_from_upstream += count

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count one client while it is served from this download."""
        self.clients += 1
        try:
            yield
        finally:
            self.clients -= 1


class TooManyDownloads(UpstreamError):
    """No new download now: as many are in flight on this node as it runs at once (or as the
    one asking may start: `share`)."""

    def __init__(self, limit: int, share: bool = False) -> None:
        whose = "started by this asker on this node" if share else "on this node"
        super().__init__(
            "pollen", f"{limit} downloads in flight {whose} already: ask again shortly", 503
        )
