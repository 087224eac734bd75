"""One pollen node: the store, the upstream client, the downloads and the HTTP front, wired up."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict

import trio

from peer.access.auth_gate import AuthGate
from peer.access.policy import AccessPolicy
from peer.body_parser import BodyParser
from peer.cluster.gossip import GossipDriver
from peer.cluster.membership import Membership
from peer.cluster.rendezvous import cluster_uplink
from peer.config import Address, NodeConfig, is_loopback_host
from peer.fetch.coordinator import DownloadTable, FetchCoordinator, OwnerUpstream
from peer.fetch.manifest_reader import ManifestReader
from peer.fetch.prefetch import Prefetcher
from peer.fetch.upstream_fetch import UpstreamFetcher
from peer.front.admin import AdminFront, load_admin_token
from peer.front.connection_limits import (
    SIDE_MAX_CONNECTIONS,
    SIDE_MAX_PER_ADDRESS,
    ConnectionLimits,
    descriptor_shortfall,
)
from peer.front.drain import Drain
from peer.front.http_server import ConnectionGate, HttpConnection, Request, serve_connection
from peer.front.registry import RegistryFront
from peer.listening import open_tcp_listeners
from peer.metrics import NodeMetrics
from peer.preheat.providers import PREHEAT_TOKEN_FILE, ProviderFront
from peer.preheat.runner import Preheater
from peer.rate_limit import RateLimiter
from peer.service.notify import Notifier
from peer.store_upkeep import keep_store
from peer.swarm import congestion
from peer.swarm.swarm import Swarm
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.credentials import BadAuthFile, Credentials, load_auth_file
from peer.upstream.node_auth import NodeAuth
from pieces.store import Store
from wire.identity import NodeIdentity

log = logging.getLogger("pollen.node")


def _raise_open_file_limit(max_connections: int) -> None:
    """Take the hard open-file limit as the soft one (systemd's default soft limit is 1024;
    trio uses epoll, so descriptors past 1024 are fine), and say so if the connections
    allowed may still not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("could not raise the open-file limit to %d: %s", target, exc)
    shortfall = descriptor_shortfall(max_connections, soft)
    if shortfall is not None:
        log.warning("%s", shortfall)


SEND_TIMEOUT = 60.0
MIN_TOKEN_LENGTH = 32  # characters of a cluster token below which the node warns
# systemd hears READY=1 once the node serves and has joined; a node whose --join answers
# nobody for this long is ready anyway (it serves alone: a mirror that is down would send
# every pull to the registry), and says so.
JOIN_READY_TIMEOUT = 30.0
# Settings a reload (SIGHUP) applies; any other change needs a restart.
RELOADABLE = (
    "upstreams",
    "default_upstream",
    "client_registries",
    "upload_rate",
    "download_rate",
    "cache_size",
    "cache_ttl",
    "disk_high",
    "disk_low",
    "auth_file",
    "auth_for_clients",
    "peer_congestion_control",  # the open links too ('system': the new ones only)
)


def load_credentials(config: NodeConfig) -> Credentials:
    """The logins of --auth-file (none without one), checked against --auth-for-clients.

    Raises:
        BadAuthFile: the file cannot be used, or a lent registry has no login in it.
    """
    if config.auth_file is None:
        return Credentials()
    credentials = load_auth_file(config.auth_file)
    missing = NodeAuth.lent_names(config.auth_for_clients) - credentials.registries()
    if missing:
        raise BadAuthFile(
            f"--auth-for-clients {', '.join(sorted(missing))}: no login for it in "
            f"{config.auth_file}"
        )
    return credentials


def _peer_links_in_clear(config: NodeConfig) -> bool:
    peer = config.peer
    return peer is not None and not config.peer_encryption and not is_loopback_host(peer.host)


def _peer_congestion_control(config: NodeConfig) -> str:
    """The congestion control of the peer links: the one named (checked with the config),
    else the preferred one where this process may set it (peer/swarm/congestion.py)."""
    name, refused = congestion.choose(config.peer_congestion_control)
    if refused is not None:
        log.warning("the peer links keep the host's TCP congestion control: %s", refused)
    return name


def _tighter(old: NodeConfig, new: NodeConfig) -> bool:
    """True when `new` bounds the cache more than `old` does (a smaller size, a shorter TTL,
    a lower high watermark, one that was not there)."""

    def lower(a: float | None, b: float | None) -> bool:
        return b is not None and (a is None or b < a)

    return (
        lower(old.cache_size, new.cache_size)
        or lower(old.cache_ttl, new.cache_ttl)
        or lower(old.disk_high, new.disk_high)
    )


class Node:
    """A running node; `run` serves until cancelled or sent SIGTERM/SIGINT."""

    def __init__(
        self,
        config: NodeConfig,
        reread_config: Callable[[], NodeConfig] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """Open the store and read (or create) the admin token.

        `reread_config`: the settings as they are now (the command line again, the config
        file re-read), for a reload on SIGHUP. `notifier`: systemd's (from the environment).

        Raises:
            ValueError: unsafe settings (see NodeConfig.check) or an empty admin token file.
            OSError: the store or the admin token cannot be opened.
        """
        config.check()
        self.config = config
        self.store = Store(
            config.data_dir,
            config.piece_size,
            config.cache_size,
            config.cache_policy(),
            pieces_per_blob=config.pieces_per_blob,
            # Alone, its own; in a cluster the members' median, kept by the swarm.
            uplink=cluster_uplink([config.declared_capacity()]),
        )
        self.upstreams = Upstreams(
            UpstreamConfig(
                mapping=config.upstreams,
                default=config.default_upstream,
                stall_timeout=config.upstream_timeout,
                client_registries=config.client_registries,
            )
        )
        # The node's own logins (--auth-file): read now, so a bad file stops the start.
        self.node_auth = NodeAuth(
            self.upstreams, load_credentials(config), NodeAuth.lent_names(config.auth_for_clients)
        )
        self._warn_of_a_login_left_out()
        links_in_clear = _peer_links_in_clear(config)
        if links_in_clear:
            log.warning(
                "peer links are neither encrypted nor authenticated after the handshake "
                "(--peer-encryption is off): clients' registry credentials and private pieces "
                "cross the network in clear, and a host on the network path can read them and "
                "add frames of its own; give every node --peer-encryption where private "
                "images are pulled or others share the network"
            )
        if config.auth_file is not None and links_in_clear:
            log.warning(
                "--auth-file: the node's logins go with its requests for blobs to their "
                "owners and, for preheat, to every member, like clients' credentials: peer "
                "links cross the network in clear text without --peer-encryption"
            )
        self.started = time.time()
        self.admin_token = b""
        self.admin_port: int | None = None
        if config.admin is not None:
            self.admin_token, token_path = load_admin_token(
                config.admin_token_file, config.data_dir
            )
            log.info("admin API token in %s", token_path)
        self.preheat_token = b""
        self.preheat_port: int | None = None
        if config.preheat_listen is not None:
            self.preheat_token, token_path = load_admin_token(
                config.preheat_token_file, config.data_dir, PREHEAT_TOKEN_FILE
            )
            log.info("preheat API token (for Harbor's provider instance) in %s", token_path)
        self.downloads: FetchCoordinator | None = None
        self.identity = NodeIdentity.generate()  # new every start, as the id was
        self.node_id = self.identity.node_id
        self.membership: Membership | None = None
        self.swarm: Swarm | None = None
        self.front: RegistryFront | None = None
        self.parser = BodyParser()  # large manifests are parsed in its worker process
        self.prefetcher: Prefetcher | None = None
        self.preheater: Preheater | None = None
        self.gossip: GossipDriver | None = None
        self._reread_config = reread_config
        self.notifier = notifier or Notifier()
        self._download_limit: RateLimiter | None = None
        self.drain = Drain()  # the registry listener's connections, at shutdown
        self.serving = False
        self.stopping = False
        self._said_ready = False  # READY=1 went to systemd

    def downloads_in_flight(self) -> int:
        return len(self.downloads.active) if self.downloads is not None else 0

    def joined(self) -> bool:
        """In a cluster: some member answered (or there is nobody to join)."""
        membership = self.membership
        if membership is None or not membership.seeds:
            return True
        if all(seed == membership.address for seed in membership.seeds):
            return True  # only ourselves to join: the first node
        return bool(membership.alive())

    def readiness(self) -> tuple[bool, str]:
        """GET /readyz: ready once it serves and has joined, until it stops."""
        if self.stopping:
            return False, "stopping"
        if not self.serving:
            return False, "starting"
        if not self.joined():
            joins = ", ".join(map(str, self.config.join))
            return False, f"serving, not joined yet (retrying {joins})"
        members = len(self.membership.alive()) if self.membership is not None else 0
        return True, f"serving, {members} other members"

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
            # What piece uploads are capped at (--upload-rate, or a slow host's pace), if anything.
            "upload_cap_bytes_per_s": swarm.upload_limit.rate,
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
                "preheat_port": self.preheat_port,
            },
            "store": {
                "bytes_used": stats.bytes_used,
                "cache_size": stats.quota,
                "complete_blobs": stats.complete_blobs,
                "partial_blobs": stats.partial_blobs,
                "manifests": stats.manifests,
                "holders": stats.holders,
                "disk_free": self.store.disk_free(),
                "cache_ttl": self.config.cache_ttl,
                "disk_high": self.config.disk_high,
                "disk_low": self.config.disk_low,
                "evictions": {
                    reason: {"blobs": count, "bytes": size}
                    for reason, (count, size) in sorted(self.store.evictions.items())
                },
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
            "preheat": [j.document() for j in self.preheater.jobs.all()] if self.preheater else [],
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started` gets the bound HTTP port."""
        config = self.config
        _raise_open_file_limit(config.max_connections)
        try:
            async with self.parser.workers(), trio.open_nursery() as nursery:
                access = AccessPolicy(self.store, self.upstreams, AuthGate(self.upstreams))
                # One cap for the peers and the upstream together.
                download_limit = self._download_limit = RateLimiter(config.download_rate)
                # Built in dependency order: the table and the upstream fetcher, the swarm
                # (given its narrow view of them; the fetcher tells it when its fetches begin
                # and end), the coordinator.
                table = DownloadTable(self.store, nursery)
                fetcher = UpstreamFetcher(
                    self.store, self.upstreams, download_limit, held_back=table.held_back
                )
                swarm = await self._start_swarm(nursery, access, download_limit, fetcher, table)
                self.downloads = FetchCoordinator(table, fetcher, swarm)
                nursery.start_soon(keep_store, self.store)
                reader = ManifestReader(self.parser)
                if config.prefetch:
                    self.prefetcher = Prefetcher(
                        self.store, self.downloads, config.prefetch_downloads
                    )
                    await nursery.start(self.prefetcher.run)
                self.preheater = Preheater(
                    self.store,
                    self.upstreams,
                    self.downloads,
                    access,
                    swarm,
                    self.node_id.hex(),
                    self.node_auth,
                    reader,
                )
                await nursery.start(self.preheater.run)
                front = self.front = RegistryFront(
                    self.store,
                    self.upstreams,
                    self.downloads,
                    access,
                    reader,
                    self.prefetcher,
                    self.node_auth,
                )
                metrics = NodeMetrics(
                    self.store, self.downloads, front.served, swarm, self.prefetcher, self.parser
                )
                listeners = await open_tcp_listeners("registry API", config.http)
                port = listeners[0].socket.getsockname()[1]
                handler = functools.partial(
                    serve_connection,
                    handler=front.handle,
                    idle_timeout=config.idle_timeout,
                    send_timeout=SEND_TIMEOUT,
                    drain=self.drain,
                    gate=ConnectionGate(
                        ConnectionLimits(config.max_connections, config.max_connections_per_address)
                    ),
                    min_read_rate=config.min_read_rate,
                )
                if config.admin is not None:
                    admin = AdminFront(
                        self.store,
                        self.admin_token,
                        self.status,
                        metrics.render,
                        self.readiness,
                        self.preheater,
                    )
                    self.admin_port = await self._listen(
                        nursery, config.admin, admin.handle, "admin API"
                    )
                    log.info("admin API on %s:%d", config.admin.host, self.admin_port)
                if config.preheat_listen is not None:
                    providers = ProviderFront(self.preheater, self.preheat_token)
                    address = config.preheat_listen
                    self.preheat_port = await self._listen(
                        nursery, address, providers.handle, "Harbor preheat API"
                    )
                    log.info("Harbor preheat API on %s:%d", address.host, self.preheat_port)
                accepting = trio.CancelScope()
                # Connections live in the node's nursery: closing the listeners at shutdown
                # (cancelling `accepting`) leaves the responses in flight to finish.
                nursery.start_soon(self._accept, accepting, handler, listeners, nursery)
                log.info(
                    "pollen serving the registry API on %s:%d, store %s, default upstream %s",
                    config.http.host,
                    port,
                    config.data_dir,
                    config.default_upstream,
                )
                self.serving = True
                task_status.started(port)
                nursery.start_soon(self._announce_ready)
                if self.notifier.watchdog_interval is not None:
                    nursery.start_soon(self._watchdog, self.notifier.watchdog_interval)
                await self._serve_signals(accepting, listeners)
                nursery.cancel_scope.cancel()
        finally:
            self.notifier.close()
            with trio.CancelScope(shield=True):
                await self.upstreams.aclose()

    @staticmethod
    async def _accept(
        scope: trio.CancelScope,
        handler: Callable[[trio.SocketStream], object],
        listeners: list[trio.SocketListener],
        connections: trio.Nursery,
    ) -> None:
        with scope:
            await trio.serve_listeners(handler, listeners, handler_nursery=connections)  # type: ignore[arg-type]

    async def _announce_ready(self) -> None:
        """READY=1 to systemd once serving and joined (see JOIN_READY_TIMEOUT)."""
        with trio.move_on_after(JOIN_READY_TIMEOUT):
            while not self.joined() and not self.stopping:
                await trio.sleep(0.1)
        if self.stopping:
            return  # stopped before it was ready: STOPPING=1 said it all
        joined = self.joined()
        if not joined:
            log.warning(
                "not joined after %.0fs (%s): serving alone meanwhile",
                JOIN_READY_TIMEOUT,
                self.readiness()[1],
            )
        self.notifier.ready(self.readiness()[1])
        self._said_ready = True
        while not self.joined():
            await trio.sleep(1.0)
        if not joined:
            log.info("joined the cluster")
            self.notifier.status(self.readiness()[1])

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that hangs stops the pings, and
        systemd restarts the node (WatchdogSec)."""
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    async def _serve_signals(
        self, accepting: trio.CancelScope, listeners: list[trio.SocketListener]
    ) -> None:
        """SIGHUP: reload. SIGTERM or SIGINT: shut down gracefully, and return."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                log.info(
                    "received %s: stopping (client responses in flight get %.0fs)",
                    signal.Signals(signum).name,
                    self.config.shutdown_grace,
                )
                await self._shut_down(accepting, listeners, signals)
                return

    async def _shut_down(
        self,
        accepting: trio.CancelScope,
        listeners: list[trio.SocketListener],
        signals: AsyncIterator[int],
    ) -> None:
        """Tell systemd, stop accepting, tell the cluster, let the responses in flight finish
        (at most --shutdown-grace seconds; a second signal ends them at once)."""
        self.stopping = True
        self.notifier.stopping(f"stopping: {self.drain.busy} client responses to finish")
        # The listeners are closed here, not when the accepting task next runs: once a member
        # has heard that we leave, a client connecting must be refused, not accepted and then
        # closed unanswered by the drain.
        accepting.cancel()
        for listener in listeners:
            await listener.aclose()
        self.drain.start()
        if self.gossip is not None:
            # The members stop choosing this node as an owner now, not after a suspicion.
            await self.gossip.leave()
        async with trio.open_nursery() as waiting:

            async def drained() -> None:
                await self.drain.wait()
                waiting.cancel_scope.cancel()

            async def second_signal() -> None:
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        log.info("second signal: stopping now")
                        waiting.cancel_scope.cancel()
                        return

            waiting.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace
            waiting.start_soon(drained)
            waiting.start_soon(second_signal)
        if self.drain.busy:
            log.warning("stopped with %d client responses unfinished", self.drain.busy)

    def reload(self) -> None:
        """Re-read the settings and apply those that can change while running (RELOADABLE);
        transfers in flight go on. A bad file leaves the running settings as they are."""
        if self._reread_config is None:
            log.warning("SIGHUP: this node has no settings to re-read")
            return
        self.notifier.reloading()
        try:
            new = self._reread_config()
            new.check()
            credentials = load_credentials(new)  # read once: a rollback reads nothing
        except Exception as exc:  # any error in the file or the flags: keep running as is
            log.error("reload failed, the running settings stay: %s", exc)
            self._ready_again()
            return
        old = self.config
        ignored = [
            f.name
            for f in dataclasses.fields(NodeConfig)
            if f.name not in RELOADABLE and getattr(new, f.name) != getattr(old, f.name)
        ]
        if ignored:
            log.warning("reload: %s changed, applied at the next restart only", ", ".join(ignored))
        running = self.node_auth.credentials
        try:
            self._apply(old, new, credentials)
        except Exception as exc:  # one step failed (no room on the disk, say): all go back
            self._apply(new, old, running)
            log.error("reload failed, the running settings stay: %s", exc)
        else:
            applied = [n for n in RELOADABLE if getattr(new, n) != getattr(old, n)]
            log.info("reloaded: %s", ", ".join(applied) or "nothing changed")
            self._warn_of_a_login_left_out()
        self._ready_again()

    def _warn_of_a_login_left_out(self) -> None:
        """Say so when the settings send requests without a login the operator gave
        (NodeAuth.default_goes_without_login): nothing else would."""
        warning = self.node_auth.default_goes_without_login()
        if warning is not None:
            log.warning("%s", warning)

    def _apply(self, old: NodeConfig, new: NodeConfig, credentials: Credentials) -> None:
        """The RELOADABLE settings of `new` over those of `old`, in the running parts."""
        self.config = dataclasses.replace(old, **{n: getattr(new, n) for n in RELOADABLE})
        self.upstreams.config = dataclasses.replace(
            self.upstreams.config,
            mapping=new.upstreams,
            default=new.default_upstream,
            client_registries=new.client_registries,
        )
        if self.swarm is not None and new.peer_congestion_control != old.peer_congestion_control:
            self.swarm.use_congestion_control(_peer_congestion_control(new))
        if self._download_limit is not None and new.download_rate != old.download_rate:
            self._download_limit.set_rate(new.download_rate)
        self.node_auth.update(credentials, NodeAuth.lent_names(new.auth_for_clients))
        if self.membership is not None:  # --upload-rate may be what it declares
            self.membership.capacity = new.declared_capacity()
        if self.swarm is not None:  # after the capacity: a slow host's pace depends on it
            self.swarm.set_upload_rate(new.upload_rate)
        if self.membership is None:  # a lone node cuts for its own (a swarm keeps the median)
            self.store.uplink = cluster_uplink([new.declared_capacity()])
        self.store.quota = new.cache_size
        self.store.policy = new.cache_policy()
        if _tighter(old, new):
            self.store.sweep(time.time())  # within the new bounds now (what is in use stays)

    def _ready_again(self) -> None:
        """After RELOADING=1: READY=1 again, if the node had said it before (a node still
        joining says it when it has joined)."""
        if self._said_ready:
            self.notifier.ready(self.readiness()[1])

    async def _listen(
        self,
        nursery: trio.Nursery,
        address: Address,
        handle: Callable[[HttpConnection, Request], Awaitable[None]],
        role: str,
    ) -> int:
        """Serve `handle` on a listener of its own (the admin API, Harbor's); its port."""
        listeners = await open_tcp_listeners(role, address)
        handler = functools.partial(
            serve_connection,
            handler=handle,
            idle_timeout=self.config.idle_timeout,
            send_timeout=SEND_TIMEOUT,
            gate=ConnectionGate(ConnectionLimits(SIDE_MAX_CONNECTIONS, SIDE_MAX_PER_ADDRESS)),
            min_read_rate=self.config.min_read_rate,
        )
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    async def _start_swarm(
        self,
        nursery: trio.Nursery,
        access: AccessPolicy,
        download_limit: RateLimiter,
        fetcher: UpstreamFetcher,
        table: DownloadTable,
    ) -> Swarm | None:
        config = self.config
        advertised = config.advertised_peer()
        if config.peer is None or advertised is None:
            return None
        membership = Membership(
            self.node_id,
            (advertised.host, advertised.port),
            seeds=tuple((a.host, a.port) for a in config.join),
            capacity=config.declared_capacity(),
        )
        self.membership = membership
        gossip = self.gossip = GossipDriver(
            membership, (config.peer.host, config.peer.port), config.cluster_token
        )
        await nursery.start(gossip.run)
        listeners = await open_tcp_listeners("peer links", config.peer)
        swarm = Swarm(
            self.identity,
            membership,
            self.store,
            access,
            config.cluster_token,
            upload_rate=config.upload_rate,
            peer_encryption=config.peer_encryption,
            download_limit=download_limit,
            congestion_control=_peer_congestion_control(config),
            upstream=OwnerUpstream(table, fetcher),
        )
        self.swarm = swarm
        await nursery.start(swarm.run, listeners)
        gossip.links = swarm
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
            "node %s: peers on %s (advertised %s, TCP congestion control %s), joining %s",
            self.node_id.hex()[:12],
            config.peer,
            advertised,
            swarm.applied_congestion_control,
            ", ".join(map(str, config.join)) or "nobody (first node)",
        )
        return swarm
