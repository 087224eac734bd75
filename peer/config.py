"""A node's settings, after flags, environment and config file have been merged (see cli.py)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pieces.layout import DEFAULT_PIECE_SIZE

DEFAULT_HTTP = "127.0.0.1:65001"
DEFAULT_UPSTREAM = "https://registry-1.docker.io"
DEFAULT_PEER = "0.0.0.0:65002"


def _primary_address() -> str:
    """This host's address as its name resolves (no packet is sent to find it)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


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
    return Address(host, int(port))


def parse_upstream(text: str) -> tuple[str, str]:
    """`NS=URL` -> (ns, url); the URL must be http:// or https://."""
    ns, sep, url = text.partition("=")
    if not sep or not ns or not url.startswith(("http://", "https://")):
        raise ValueError(f"not NS=URL: {text!r} (e.g. docker.io=https://registry-1.docker.io)")
    return ns, url.rstrip("/")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    http: Address = field(default_factory=lambda: parse_address(DEFAULT_HTTP))
    data_dir: Path = field(default_factory=default_data_dir)
    upstreams: dict[str, str] = field(default_factory=dict)
    default_upstream: str = DEFAULT_UPSTREAM
    cache_size: int | None = None
    piece_size: int = DEFAULT_PIECE_SIZE
    idle_timeout: float = 60.0
    upstream_timeout: float = 30.0
    # The swarm: None runs a lone caching mirror (no gossip, no peer port).
    peer: Address | None = None
    advertise: Address | None = None
    join: tuple[Address, ...] = ()
    cluster_token: bytes | None = None
    upload_rate: int | None = None  # bytes/s to peers
    download_rate: int | None = None  # bytes/s from peers and the upstream together

    def advertised_peer(self) -> Address | None:
        """The peer address others use: --advertise, else --peer when it names a host."""
        if self.peer is None:
            return None
        if self.advertise is not None:
            return self.advertise
        if self.peer.host in ("0.0.0.0", "::", ""):
            return Address(_primary_address(), self.peer.port)
        return self.peer
