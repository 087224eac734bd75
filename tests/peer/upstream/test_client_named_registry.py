"""A registry a client names (a `?ns=` no --upstream maps) must be outside this host and its
link: names like `127.1` were refused, but a name that resolves to loopback (a host's own name
in /etc/hosts, a public DNS name pointing at 127.0.0.1) was connected to, and the error told an
open port from a closed one: a scan of the node's loopback ports for any client (a helper's
attacker probe). Now every address the name resolves to is checked before connecting, for
blobs and for every other request. A real node; the name is resolved by a resolver the test
sets (trio's hook for that), to a port the test listens on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import trio
import trio.socket

from peer.config import Address, NodeConfig
from peer.node import Node

NAME = "registry.example"


class Loopback(trio.abc.HostnameResolver):
    """NAME resolves to 127.0.0.1; nothing else resolves."""

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | str | None, port: bytes | str | int | None, *args: object, **kw: object
    ) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        name = host.decode() if isinstance(host, bytes) else host
        if name != NAME:
            raise trio.socket.gaierror(-2, "Name or service not known")
        number = int(port) if port is not None else 0
        return [(trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("127.0.0.1", number))]

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError


async def test_a_client_named_registry_at_a_loopback_address_is_never_connected_to(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    connections = 0

    async def count(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, count, listeners)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream="http://127.0.0.1:9",
    )
    trio.socket.set_custom_hostname_resolver(Loopback())
    try:
        http_port = await nursery.start(Node(config).run)
        ns = f"{NAME}:{port}"
        digest = "sha256:" + hashlib.sha256(b"any").hexdigest()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as c:
            for target in (f"/v2/x/blobs/{digest}", "/v2/x/manifests/latest", "/v2/x/tags/list"):
                got = await c.get(f"{target}?ns={ns}")
                assert got.status_code in (400, 502), (target, got.status_code)
                assert b"loopback" in got.content, got.content
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert connections == 0, "the node connected to a loopback port a client named"
