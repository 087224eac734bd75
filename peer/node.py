"""One pollen node: the store, the upstream client, the downloads and the HTTP front, wired up."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from dataclasses import asdict

import trio

from peer.access.auth_gate import AuthGate
from peer.access.policy import AccessPolicy
from peer.cluster.gossip import GossipDriver
from peer.cluster.membership import Membership
from peer.config import Address, NodeConfig
from peer.fetch.coordinator import DownloadTable, FetchCoordinator, OwnerUpstream
from peer.fetch.prefetch import Prefetcher
from peer.fetch.upstream_fetch import UpstreamFetcher
from peer.front.admin import AdminFront, load_admin_token
from peer.front.http_server import serve_connection
from peer.front.registry import RegistryFront
from peer.metrics import NodeMetrics
from peer.rate_limit import RateLimiter
from peer.swarm.swarm import Swarm
from peer.upstream.client import UpstreamConfig, Upstreams
from pieces.store import Store

log = logging.getLogger("pollen.node")

SEND_TIMEOUT = 60.0
MIN_TOKEN_LENGTH = 32  # characters of a cluster token below which the node warns


class Node:
    """A running node; `run` serves until cancelled or sent SIGTERM/SIGINT."""

    def __init__(self, config: NodeConfig) -> None:
        """Open the store and read (or create) the admin token.

        Raises:
            ValueError: unsafe settings (see NodeConfig.check) or an empty admin token file.
            OSError: the store or the admin token cannot be opened.
        """
        config.check()
        self.config = config
        self.store = Store(config.data_dir, config.piece_size, config.cache_size)
        self.upstreams = Upstreams(
            UpstreamConfig(
                mapping=config.upstreams,
                default=config.default_upstream,
                stall_timeout=config.upstream_timeout,
            )
        )
        self.started = time.time()
        self.admin_token = b""
        self.admin_port: int | None = None
        if config.admin is not None:
            self.admin_token, token_path = load_admin_token(
                config.admin_token_file, config.data_dir
            )
            log.info("admin API token in %s", token_path)
        self.downloads: FetchCoordinator | None = None
        self.node_id = os.urandom(16)
        self.membership: Membership | None = None
        self.swarm: Swarm | None = None
        self.front: RegistryFront | None = None
        self.prefetcher: Prefetcher | None = None

    def downloads_in_flight(self) -> int:
        return len(self.downloads.active) if self.downloads is not None else 0

    def _owner_of(self, digest: str) -> str | None:
        if self.swarm is None:
            return None
        return self.swarm.owner_candidates(digest)[0].hex()

    def _swarm_status(self) -> dict[str, object]:
        swarm, membership = self.swarm, self.membership
        if swarm is None or membership is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "node_id": self.node_id.hex(),
            "address": f"{membership.address[0]}:{membership.address[1]}",
            "incarnation": membership.incarnation,
            "members": [
                {
                    "node_id": m.node_id.hex(),
                    "address": f"{m.address[0]}:{m.address[1]}",
                    "status": m.status.name.lower(),
                    "incarnation": m.incarnation,
                    "linked": m.node_id in swarm.links,
                }
                for m in membership.members.values()
            ],
            "banned": [p.hex() for p in swarm.bans.banned(trio.current_time())],
            **asdict(swarm.counters),
        }

    def _prefetch_status(self) -> dict[str, object]:
        prefetcher = self.prefetcher
        if prefetcher is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "running": prefetcher.running,
            "queued": prefetcher.queued,
            "manifests_waiting": prefetcher.manifests_waiting,
            **asdict(prefetcher.counters),
        }

    def status(self) -> dict[str, object]:
        """The JSON document of GET /_pollen/status."""
        stats = self.store.stats()
        downloads = self.downloads
        transfers = []
        if downloads is not None:
            for download in downloads.active.values():
                partial = download.partial
                transfers.append(
                    {
                        "digest": download.digest,
                        "registry": self.upstreams.base_url(download.namespace),
                        "repository": download.name,
                        "size": download.size,
                        "bytes_present": partial.bytes_present if partial else 0,
                        "bytes_from_upstream": download.bytes_from_upstream,
                        "bytes_from_peers": download.bytes_from_peers,
                        "owner": self._owner_of(download.digest),
                        "clients": download.clients,
                        "seconds": round(trio.current_time() - download.started, 3),
                    }
                )
        return {
            "node": {
                "http": str(self.config.http),
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - self.started, 3),
                "data_dir": str(self.config.data_dir),
            },
            "store": {
                "bytes_used": stats.bytes_used,
                "cache_size": stats.quota,
                "complete_blobs": stats.complete_blobs,
                "partial_blobs": stats.partial_blobs,
                "manifests": stats.manifests,
                "readers": stats.readers,
                "disk_free": self.store.disk_free(),
            },
            "upstream": {
                "bytes": downloads.bytes_from_upstream if downloads else 0,
                "downloads_completed": downloads.completed if downloads else 0,
                "downloads_failed": downloads.failed if downloads else 0,
            },
            "served": asdict(self.front.served) if self.front else {},
            "prefetch": self._prefetch_status(),
            "swarm": self._swarm_status(),
            "transfers": transfers,
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started` gets the bound HTTP port."""
        config = self.config
        try:
            async with trio.open_nursery() as nursery:
                access = AccessPolicy(self.store, self.upstreams, AuthGate(self.upstreams))
                # One cap for the peers and the upstream together.
                download_limit = RateLimiter(config.download_rate)
                # Built in dependency order, nothing patched afterwards: the table and the
                # upstream fetcher, the swarm (given its narrow view of them), the coordinator.
                table = DownloadTable(self.store, nursery)
                fetcher = UpstreamFetcher(self.store, self.upstreams, download_limit)
                swarm = await self._start_swarm(
                    nursery, access, download_limit, OwnerUpstream(table, fetcher)
                )
                self.downloads = FetchCoordinator(table, fetcher, swarm)
                if config.prefetch:
                    self.prefetcher = Prefetcher(
                        self.store, self.downloads, config.prefetch_downloads
                    )
                    await nursery.start(self.prefetcher.run)
                front = self.front = RegistryFront(
                    self.store, self.upstreams, self.downloads, access, self.prefetcher
                )
                metrics = NodeMetrics(
                    self.store, self.downloads, front.served, swarm, self.prefetcher
                )
                listeners = await trio.open_tcp_listeners(config.http.port, host=config.http.host)
                port = listeners[0].socket.getsockname()[1]
                handler = functools.partial(
                    serve_connection,
                    handler=front.handle,
                    idle_timeout=config.idle_timeout,
                    send_timeout=SEND_TIMEOUT,
                )
                if config.admin is not None:
                    admin = AdminFront(self.store, self.admin_token, self.status, metrics.render)
                    await self._start_admin(nursery, config.admin, admin)
                nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
                log.info(
                    "pollen serving the registry API on %s:%d, store %s, default upstream %s",
                    config.http.host,
                    port,
                    config.data_dir,
                    config.default_upstream,
                )
                task_status.started(port)
                await trio.serve_listeners(handler, listeners)
        finally:
            with trio.CancelScope(shield=True):
                await self.upstreams.aclose()

    async def _start_admin(
        self, nursery: trio.Nursery, address: Address, admin: AdminFront
    ) -> None:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        self.admin_port = listeners[0].socket.getsockname()[1]
        handler = functools.partial(
            serve_connection,
            handler=admin.handle,
            idle_timeout=self.config.idle_timeout,
            send_timeout=SEND_TIMEOUT,
        )
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        log.info("admin API on %s:%d", address.host, self.admin_port)

    async def _start_swarm(
        self,
        nursery: trio.Nursery,
        access: AccessPolicy,
        download_limit: RateLimiter,
        upstream: OwnerUpstream,
    ) -> Swarm | None:
        config = self.config
        advertised = config.advertised_peer()
        if config.peer is None or advertised is None:
            return None
        membership = Membership(
            self.node_id,
            (advertised.host, advertised.port),
            seeds=tuple((a.host, a.port) for a in config.join),
        )
        self.membership = membership
        await nursery.start(
            GossipDriver(membership, (config.peer.host, config.peer.port), config.cluster_token).run
        )
        listeners = await trio.open_tcp_listeners(config.peer.port, host=config.peer.host)
        swarm = Swarm(
            self.node_id,
            membership,
            self.store,
            access,
            config.cluster_token,
            config.piece_size,
            upload_rate=config.upload_rate,
            peer_encryption=config.peer_encryption,
            download_limit=download_limit,
            upstream=upstream,
        )
        self.swarm = swarm
        await nursery.start(swarm.run, listeners)
        if config.cluster_token is None:
            log.warning(
                "no --cluster-token: this is an open cluster, any host that reaches %s can join",
                config.peer,
            )
        elif len(config.cluster_token) < MIN_TOKEN_LENGTH:
            # A host that a node dials (or that sits on the path) sees a proof made with the
            # token and may try guesses against it offline: a short token falls.
            log.warning(
                "the cluster token has %d characters: use a random one of at least %d "
                "(e.g. head -c 32 /dev/urandom | base64)",
                len(config.cluster_token),
                MIN_TOKEN_LENGTH,
            )
        log.info(
            "node %s: peers on %s (advertised %s), joining %s",
            self.node_id.hex()[:12],
            config.peer,
            advertised,
            ", ".join(map(str, config.join)) or "nobody (first node)",
        )
        return swarm


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return
