"""A node's settings, after flags, environment and config file have been merged (see cli.py)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from peer.front.connection_limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from peer.front.read_pace import DEFAULT_MIN_RATE
from peer.swarm import congestion
from pieces.layout import DEFAULT_PIECE_SIZE, PIECES_PER_BLOB
from pieces.room import Watermarks
from pieces.store import CachePolicy
from wire.names import is_registry_url, is_valid_host, is_valid_registry

DEFAULT_HTTP = "127.0.0.1:65001"
DEFAULT_UPSTREAM = "https://registry-1.docker.io"
DEFAULT_PEER = "0.0.0.0:65002"
DEFAULT_ADMIN = "127.0.0.1:65003"


def _primary_address() -> str:
    """This host's address as its name resolves (no packet is sent to find it)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: addresses other hosts cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    env = os.environ.get("POLLEN_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "pollen"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`127.0.0.1:65001`, `[::1]:65001` or `:65001` (all interfaces).

    Raises:
        ValueError: no port, or a port outside 0..65535.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an ADDR:PORT: {text!r} (e.g. 127.0.0.1:65001)")
    host = host.strip("[]") or "0.0.0.0"
    if not is_valid_host(host):
        raise ValueError(f"not a host name or IP address: {host[:100]!r} in {text[:100]!r}")
    return Address(host, int(port))


def parse_upstream(text: str) -> tuple[str, str]:
    """`NS=URL` -> (ns, url); the URL must be http:// or https://."""
    ns, sep, url = text.partition("=")
    if not sep or not ns or not url.startswith(("http://", "https://")):
        raise ValueError(f"not NS=URL: {text!r} (e.g. docker.io=https://registry-1.docker.io)")
    if not is_valid_registry(ns):
        # Clients send it as ?ns=, which must be a registry host[:port] to be accepted.
        raise ValueError(f"{ns!r} is not a registry host[:port] (as clients send it in ?ns=)")
    return ns, parse_registry_url(url)


def parse_registry_url(text: str) -> str:
    """A registry's base URL, without a trailing slash: `http(s)://host[:port][/path]`.

    Raises:
        ValueError: anything else (a query, spaces, a login in it: the URL names a private
            blob's origin to the other nodes, which refuse such).
    """
    url = text.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest  # HTTPS://... is https://...
    if not is_registry_url(url):
        raise ValueError(
            f"not a registry URL: {text[:200]!r} (http:// or https://, a host[:port], then a "
            "path at most, e.g. https://registry-1.docker.io)"
        )
    return url


@dataclass(frozen=True, slots=True)
class NodeConfig:
    http: Address = field(default_factory=lambda: parse_address(DEFAULT_HTTP))
    data_dir: Path = field(default_factory=default_data_dir)
    upstreams: dict[str, str] = field(default_factory=dict)
    default_upstream: str = DEFAULT_UPSTREAM
    # Whether a client's (or a member's) ?ns= may name a registry no --upstream maps.
    client_registries: bool = True
    cache_size: int | None = None
    cache_ttl: float | None = None  # seconds a blob may go unread before it is evicted
    # Disk use of the store's file system (fractions): above high, evict down to low.
    disk_high: float | None = None
    disk_low: float | None = None
    piece_size: int = DEFAULT_PIECE_SIZE  # the largest piece (pieces/layout.py's rule)
    pieces_per_blob: int = PIECES_PER_BLOB  # the least pieces the rule cuts a blob into
    idle_timeout: float = 60.0
    min_read_rate: int = DEFAULT_MIN_RATE  # bytes/s a client must take an answer at (0: any)
    # Client connections the registry port holds at once, in all and from one address
    # (peer/front/connection_limits.py); over them a connection is answered 503.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_PER_ADDRESS
    upstream_timeout: float = 30.0
    # The swarm: None runs a lone caching mirror (no gossip, no peer port).
    peer: Address | None = None
    advertise: Address | None = None
    join: tuple[Address, ...] = ()
    cluster_token: bytes | None = None
    peer_encryption: bool = False  # seal every frame between nodes (all nodes must agree)
    # The TCP congestion control of the peer links (peer/swarm/congestion.py; "system": the
    # host's default; None: CUBIC where this process may set it, else the host's).
    peer_congestion_control: str | None = None
    upload_rate: int | None = None  # bytes/s to peers
    # This host's upload capacity (bytes/s), told to the cluster: rendezvous owners are
    # weighted by it (None: --upload-rate if set, else not declared).
    uplink: int | None = None
    download_rate: int | None = None  # bytes/s from peers and the upstream together
    # The admin API's own listener (None: none); its token file (None: <data-dir>/admin.token).
    admin: Address | None = None
    admin_token_file: Path | None = None
    # Harbor's P2P preheat (as a Dragonfly or Kraken provider): its listener (None: none) and
    # its bearer token file (None: <data-dir>/preheat.token).
    preheat_listen: Address | None = None
    preheat_token_file: Path | None = None
    insecure_open_cluster: bool = False  # allow no token on a non-loopback peer address
    # Image-aware prefetch: serving an image manifest starts the downloads of its blobs, at
    # most `prefetch_downloads` at once (peer/fetch/prefetch.py).
    prefetch: bool = True
    prefetch_downloads: int = 4
    # The node's own registry logins (docker config.json / containers auth.json), and the
    # registries whose logins it also uses for client requests that bring none.
    auth_file: Path | None = None
    auth_for_clients: tuple[str, ...] = ()
    # At SIGTERM: seconds the client responses in flight get to finish.
    shutdown_grace: float = 30.0

    def check(self) -> None:
        """Refuse settings that would make the node unsafe or unusable.

        Raises:
            ValueError: the message says what to change.
        """
        if (
            self.peer is not None
            and self.cluster_token is None
            and not self.insecure_open_cluster
            and not is_loopback_host(self.peer.host)
        ):
            raise ValueError(
                f"no cluster token, and the peer port {self.peer} is reachable from other "
                "hosts: anyone who reaches it could join the cluster and read cached blobs. "
                "Give every node the same --cluster-token-file, or pass "
                "--insecure-open-cluster if that is really wanted."
            )
        if self.peer is not None and self.peer_congestion_control is not None:
            congestion.check(self.peer_congestion_control)
        for url in (self.default_upstream, *self.upstreams.values()):
            if not is_registry_url(url):
                raise ValueError(f"not a registry URL: {url[:200]!r} (e.g. https://ghcr.io)")
        if self.auth_for_clients and self.auth_file is None:
            raise ValueError("--auth-for-clients lends the logins of --auth-file: give it too")
        for registry in self.auth_for_clients:
            if not is_valid_registry(registry):
                raise ValueError(f"--auth-for-clients {registry!r} is not a registry host[:port]")
        if (self.disk_low is not None) != (self.disk_high is not None):
            raise ValueError("--disk-low needs --disk-high (the use at which eviction starts)")
        if (
            self.disk_high is not None
            and self.disk_low is not None
            and (self.disk_low >= self.disk_high)
        ):
            raise ValueError(
                f"--disk-low ({self.disk_low:.0%}) must be below --disk-high "
                f"({self.disk_high:.0%}): eviction runs from high down to low"
            )
        if self.prefetch_downloads < 1:
            raise ValueError(
                f"--prefetch-downloads must be at least 1, not {self.prefetch_downloads} "
                "(use --no-prefetch to turn prefetch off)"
            )

    def declared_capacity(self) -> int:
        """What this node tells the cluster of its upload capacity (0: nothing)."""
        return self.uplink or self.upload_rate or 0

    def cache_policy(self) -> CachePolicy:
        """What the store does besides keeping --cache-size (pieces/room.py)."""
        marks = None
        if self.disk_high is not None and self.disk_low is not None:
            marks = Watermarks(self.disk_high, self.disk_low)
        return CachePolicy(ttl=self.cache_ttl, marks=marks)

    def advertised_peer(self) -> Address | None:
        """The peer address others use: --advertise, else --peer when it names a host."""
        if self.peer is None:
            return None
        if self.advertise is not None:
            return self.advertise
        if self.peer.host in ("0.0.0.0", "::", ""):
            return Address(_primary_address(), self.peer.port)
        return self.peer
