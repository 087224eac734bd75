"""A whole simulated run: the hosts, the origin, message delivery, deaths, joins, the end.

Time 0 is the moment every client starts its pull, on a cluster whose membership has
converged (what the testbed waits for). Every node gets its own `random.Random`, seeded from
the run's seed and its index; the world has one more, for choosing whom to kill. With the same
configuration and seed the run is the same, event for event.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from bench.bound import t_min
from bench.simulate.clients import SKOPEO_PARALLEL, Client
from bench.simulate.events import EventQueue
from bench.simulate.image import Blob, image_blobs, plain_layer_sizes
from bench.simulate.network import DEFAULT_RATE_STEP, Flow, Network
from bench.simulate.node import MembersSync, MemberWord, SimNode
from peer.cluster.membership import Address, Message
from peer.cluster.rendezvous import cluster_uplink, owner_order
from peer.swarm.actions import Send
from pieces.layout import DEFAULT_PIECE_SIZE, PIECES_PER_BLOB, PieceLayout, piece_size_for
from wire.events import Event

MBIT = 1_000_000 // 8
PEER_PORT = 65002
CHECK_EVERY = 4096  # events between looks at the wall clock (progress, --max-wall)


@dataclass(frozen=True, slots=True)
class Kill:
    """At `at` seconds, kill `count` random live nodes, or (`owner`) the node that owns the
    largest blob then."""

    at: float
    count: int = 1
    owner: bool = False


@dataclass(frozen=True, slots=True)
class Join:
    """At `at` seconds, `count` new nodes start (joining through the first node) and pull."""

    at: float
    count: int = 1


@dataclass(frozen=True)
class SimConfig:
    """Defaults: `pollen bench swarm --nodes 8 --size 224MiB --layers 3` (100 Mbit/s up and
    down on every host, the origin's uplink too; loopback namespaces, no added latency)."""

    nodes: int = 8
    uplink: int = 100 * MBIT
    slow_hosts: int = 0  # this many of the hosts (the last ones) upload at `slow_uplink`
    slow_uplink: int | None = None
    downlink: int | None = 100 * MBIT
    origin_up: int = 100 * MBIT
    latency: float = 0.0  # one way, seconds
    layer_sizes: tuple[int, ...] = tuple(plain_layer_sizes(224 * 2**20, 3))
    piece_size: int = DEFAULT_PIECE_SIZE
    pieces_per_blob: int = PIECES_PER_BLOB
    parallel: int = SKOPEO_PARALLEL
    seed: int = 0
    rate_step: float = DEFAULT_RATE_STEP
    max_time: float | None = None  # simulated seconds [default: 100 x T_min + 600]
    max_wall: float | None = None  # wall seconds
    prefetch: bool = True  # a node that serves a manifest fetches its blobs (--no-prefetch)
    # The clients' credentials are bearer tokens, which may expire (--tokens): an owner asks
    # for no chunk after the window (peer/fetch/chunks.py). Default: no credentials.
    tokens: bool = False
    # A fetching node invites the owner to push its first copies (wire/protocol.py, Invite);
    # off (--no-pushes): the owner offers each with a Have and waits for the Request.
    pushes: bool = True
    # Each client reads at most this many bytes/s, shared by the blobs it reads at once
    # (--client-read; clients.py); None: a blob counts as soon as the node holds it.
    client_read: float | None = None
    kills: tuple[Kill, ...] = ()
    joins: tuple[Join, ...] = ()

    def image_bytes(self) -> int:
        return sum(b.size for b in image_blobs(list(self.layer_sizes)))

    def bound(self) -> float:
        n = self.nodes
        uplinks = [self.uplink_of(i) for i in range(n)]
        return t_min(self.image_bytes(), self.origin_up, uplinks, [self.downlink] * n)

    def uplink_of(self, index: int) -> int:
        """Host `index`'s upload rate (the last `slow_hosts` of the first `nodes` are slow)."""
        slow = self.slow_uplink is not None and self.nodes - self.slow_hosts <= index < self.nodes
        return self.slow_uplink if slow and self.slow_uplink is not None else self.uplink


@dataclass
class Stats:
    """Counters of the whole run (all nodes together)."""

    messages: int = 0
    datagrams: int = 0
    requests: int = 0
    schedules: int = 0
    schedules_skipped: int = 0
    pieces_from_peers: int = 0
    bytes_from_peers: int = 0
    duplicate_bytes: int = 0  # piece bytes a node received and could not use
    rejects_choked: int = 0
    rejects_missing: int = 0
    uploads_cancelled: int = 0
    pieces_pushed: int = 0  # owners' first copies sent unasked
    chokes: int = 0
    upstream_requests: int = 0
    last_upstream_request_ms: int = 0  # when the last request to the registry was made
    upstream_fallbacks: int = 0
    connects: int = 0
    connects_failed: int = 0
    syncs: int = 0
    syncs_skipped: int = 0
    member_suspected: int = 0  # a node came to suspect another (SWIM)
    member_declared_dead: int = 0  # a node came to hold another dead

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Result:
    config: SimConfig
    blobs: list[Blob]
    done: dict[str, float | None]  # node -> when it had the whole image (None: not done)
    killed: dict[str, float]  # node -> when it was killed
    joined: dict[str, float]  # node -> when it started (late joiners)
    origin_bytes: int
    stats: Stats
    simulated_s: float
    wall_s: float
    stop: str  # done | max-time | max-wall | idle
    events: int
    rate_recomputations: int
    most_flows: int


def node_id(seed: int, index: int) -> bytes:
    return hashlib.blake2b(f"pollen-sim/{seed}/{index}".encode(), digest_size=16).digest()


class Simulation:
    def __init__(self, config: SimConfig, progress: Callable[[str], None] | None = None) -> None:
        if config.nodes < 1:
            raise ValueError("at least one node")
        self.config = config
        self.progress = progress
        self.queue = EventQueue()
        self.latency = config.latency
        self.prefetch = config.prefetch
        self.stats = Stats()
        self.blobs = image_blobs(list(config.layer_sizes))
        # Pieces sized to each blob as its owner cuts them (`--piece-size` the largest, the
        # cluster's declared uplink): set once the hosts are made, below.
        self.layouts: dict[str, PieceLayout] = {}
        # The origin is host 0; it sends only (its downlink carries requests: unshaped).
        self.network = Network(self.queue, [float(config.origin_up)], [None], config.rate_step)
        self.origin_host = 0
        self.network.on_activity = self._flow_activity
        self.by_host: dict[int, SimNode] = {}
        self.nodes: list[SimNode] = []
        self.by_id: dict[bytes, SimNode] = {}
        self.by_address: dict[Address, SimNode] = {}
        self.clients: dict[str, Client] = {}
        self.upstream_flows: list[Flow] = []
        self.killed: dict[str, float] = {}
        self.joined: dict[str, float] = {}
        self.done_count = 0
        self._orders: dict[
            tuple[str, frozenset[bytes], frozenset[tuple[bytes, int]]], list[bytes]
        ] = {}
        self._rng = random.Random(f"{config.seed}/world")
        self._changes_left = len(config.kills) + len(config.joins)
        self._wall_start = 0.0
        self._last_progress = 0.0
        initial = [self._new_node(()) for _ in range(config.nodes)]
        self.layouts = self._cluster_layouts(initial)
        seed = (initial[0].address,)
        for node in initial[1:]:
            # Joined through the first node, as the testbed's nodes do (`--join node1`).
            node.membership.seeds = seed
        for node in initial:
            node.know(initial)
        for node in initial:
            self._start(node)
        for kill in config.kills:
            self.queue.at(kill.at, self._kill, kill)
        for join in config.joins:
            self.queue.at(join.at, self._join, join)

    def _cluster_layouts(self, nodes: list[SimNode]) -> dict[str, PieceLayout]:
        """Each blob cut as its owner cuts it: for the cluster's uplink, the median of what
        the hosts declare (pieces/layout.py, peer/cluster/rendezvous.py `cluster_uplink`).
        Every node that fetches the blob takes the owner's layout from its PieceMeta."""
        config = self.config
        uplink = cluster_uplink(n.membership.capacity for n in nodes)
        return {
            b.digest: PieceLayout(
                b.size, piece_size_for(b.size, config.piece_size, config.pieces_per_blob, uplink)
            )
            for b in self.blobs
        }

    # ---- hosts -------------------------------------------------------------------------------

    def _new_node(self, seeds: tuple[Address, ...]) -> SimNode:
        index = len(self.nodes)
        config = self.config
        n = index + 1
        address = (f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", PEER_PORT)
        host = self.network.add_host(float(config.uplink_of(index)), config.downlink)
        rng = random.Random(f"{config.seed}/{index}")
        node = SimNode(self, f"node{n}", node_id(config.seed, index), address, host, rng, seeds)
        self.nodes.append(node)
        self.by_id[node.node_id] = node
        self.by_address[address] = node
        self.by_host[host] = node
        return node

    def _flow_activity(self, flow: Flow) -> None:
        """A flow into a host started or stopped: a peer's, or the registry's answer."""
        node = self.by_host.get(flow.dst)
        if node is None or not node.alive:
            return
        delta = 1 if flow.active else -1
        if flow.src == self.origin_host:
            node.upstream_streams += delta
        else:
            node.receiving_changed(delta)

    def _start(self, node: SimNode) -> None:
        node.start()
        digests = [b.digest for b in self.blobs]
        config = self.config
        client = Client(node, digests, config.parallel, self._done, config.client_read)
        self.clients[node.name] = client
        client.start()

    def _done(self, client: Client) -> None:
        self.done_count += 1
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self._changes_left:
            return
        if all(c.done_at is not None or not c.node.alive for c in self.clients.values()):
            self.queue.stop("done")

    def _kill(self, kill: Kill) -> None:
        self._changes_left -= 1
        live = [n for n in self.nodes if n.alive]
        if kill.owner:
            largest = max(self.blobs, key=lambda b: b.size)
            capacity = {n.node_id: n.membership.capacity for n in live}
            first = owner_order(largest.digest, [n.node_id for n in live], capacity)[0]
            victims = [self.by_id[first]]
        else:
            victims = self._rng.sample(live, min(kill.count, len(live)))
        for node in victims:
            peers = list(node.links)
            node.die()
            self.killed[node.name] = self.queue.now
            # Its links break at once: every peer notices now (SWIM takes longer).
            for peer in peers:
                self.by_id[peer].link_lost(node.node_id)
        self._maybe_finished()

    def _join(self, join: Join) -> None:
        self._changes_left -= 1
        seed = (self.nodes[0].address,)
        for _ in range(join.count):
            node = self._new_node(seed)
            self.joined[node.name] = self.queue.now
            self._start(node)

    def link(self, a: SimNode, b: SimNode) -> None:
        a.links[b.node_id] = None
        b.links[a.node_id] = None

    def owner_order(
        self, digest: str, ids: frozenset[bytes], capacities: frozenset[tuple[bytes, int]]
    ) -> list[bytes]:
        """Rendezvous order, shared by the nodes that see the same members (most of them)."""
        key = (digest, ids, capacities)
        order = self._orders.get(key)
        if order is None:
            if len(self._orders) > 4096:
                self._orders.clear()  # views diverged for a while: start over
            order = self._orders[key] = owner_order(digest, ids, dict(capacities))
        return order

    # ---- delivery ----------------------------------------------------------------------------

    def send(self, src: SimNode, peer: bytes, event: Event | MembersSync | MemberWord) -> None:
        """A control message over the link: the latency, no bandwidth."""
        if peer not in src.links:
            return
        self.stats.messages += 1
        self.queue.post(self.queue.now + self.latency, self._deliver, (src, peer, event))

    def _deliver(self, arg: tuple[SimNode, bytes, Event | MembersSync | MemberWord]) -> None:
        src, peer, event = arg
        dst = self.by_id[peer]
        if dst.alive and src.node_id in dst.links:
            dst.receive(src.node_id, event)

    def send_many(self, src: SimNode, sends: list[Send]) -> None:
        self.stats.messages += len(sends)
        self.queue.post(self.queue.now + self.latency, self._deliver_many, (src, sends))

    def _deliver_many(self, arg: tuple[SimNode, list[Send]]) -> None:
        src, sends = arg
        source = src.node_id
        by_id = self.by_id
        for send in sends:
            dst = by_id[send.peer]
            if dst.alive and source in dst.links:
                dst.receive(source, send.event)

    def deliver_piece(self, src: SimNode, peer: bytes, digest: str, index: int, n: int) -> None:
        """The piece's last byte left `src`: it is there one latency later."""
        self.queue.post(self.queue.now + self.latency, self._piece, (src, peer, digest, index, n))

    def _piece(self, arg: tuple[SimNode, bytes, str, int, int]) -> None:
        src, peer, digest, index, nbytes = arg
        dst = self.by_id[peer]
        if dst.alive:
            dst.on_piece(src.node_id, digest, index, nbytes)

    def datagram(self, src: SimNode, address: Address, message: Message) -> None:
        target = self.by_address.get(address)
        if target is None:
            return
        self.stats.datagrams += 1
        self.queue.post(
            self.queue.now + self.latency, self._datagram, (target, message, src.address)
        )

    def _datagram(self, arg: tuple[SimNode, Message, Address]) -> None:
        target, message, source = arg
        if target.alive:
            target.receive_datagram(message, source)

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> Result:
        config = self.config
        limit = config.max_time
        if limit is None:
            limit = 100 * config.bound() + 600
        self._wall_start = self._last_progress = time.monotonic()
        stop = self.queue.run(limit, CHECK_EVERY, self._check)
        if stop == "until":
            stop = "max-time"
        self._show(final=True)
        wall = time.monotonic() - self._wall_start
        done = {name: client.done_at for name, client in self.clients.items()}
        return Result(
            config=config,
            blobs=self.blobs,
            done=done,
            killed=dict(self.killed),
            joined=dict(self.joined),
            origin_bytes=self.origin_bytes(),
            stats=self.stats,
            simulated_s=self.queue.now,
            wall_s=wall,
            stop=stop,
            events=self.queue.processed,
            rate_recomputations=self.network.recomputations,
            most_flows=self.network.most_flows,
        )

    def origin_bytes(self) -> int:
        """What the origin sent: every upstream flow's bytes, with the part of a transfer
        under way (or cut off) when the run stopped."""
        total = 0
        now = self.queue.now
        for flow in self.upstream_flows:
            total += flow.sent
            if flow.active and flow.rate:
                left = max(0.0, flow.remaining - flow.rate * (now - flow.synced))
                total += int(flow.size - left)
        return total

    def _check(self) -> None:
        wall = time.monotonic()
        max_wall = self.config.max_wall
        if max_wall is not None and wall - self._wall_start > max_wall:
            self.queue.stop("max-wall")
        if wall - self._last_progress > 0.5:
            self._last_progress = wall
            self._show(final=False)

    def _show(self, final: bool) -> None:
        if self.progress is None:
            return
        live = sum(1 for n in self.nodes if n.alive)
        wall = time.monotonic() - self._wall_start
        self.progress(
            f"simulated {self.queue.now:7.1f}s  {self.done_count}/{live} nodes done  "
            f"wall {wall:6.1f}s  events {self.queue.processed:,}" + ("\n" if final else "")
        )
