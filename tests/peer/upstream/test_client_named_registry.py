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
import pytest
import trio
import trio.socket

from peer.access.auth_gate import AuthGate
from peer.config import Address, NodeConfig
from peer.node import Node
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.errors import UpstreamError

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


class Counting:
    """A loopback port that counts the connections it gets (and closes them)."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._count, listeners)

    async def _count(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        await stream.aclose()


def _node(tmp_path: Path) -> Node:
    """A node whose default upstream is nowhere (only the registries the tests name count)."""
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream="http://127.0.0.1:9",
        prefetch=False,
    )
    return Node(config)


async def test_a_client_named_registry_at_a_loopback_address_is_never_connected_to(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    counting = Counting()
    port = await nursery.start(counting.serve)
    trio.socket.set_custom_hostname_resolver(Loopback())
    try:
        http_port = await nursery.start(_node(tmp_path).run)
        ns = f"{NAME}:{port}"
        digest = "sha256:" + hashlib.sha256(b"any").hexdigest()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as c:
            for target in (f"/v2/x/blobs/{digest}", "/v2/x/manifests/latest", "/v2/x/tags/list"):
                got = await c.get(f"{target}?ns={ns}")
                assert got.status_code in (400, 502), (target, got.status_code)
                assert b"loopback" in got.content, got.content
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert counting.connections == 0, "the node connected to a loopback port a client named"


class Rebinding(Loopback):
    """NAME resolves to a public address the first time, to 127.0.0.1 after (DNS rebinding)."""

    def __init__(self) -> None:
        self.asked = 0

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | str | None, port: bytes | str | int | None, *args: object, **kw: object
    ) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        answer = await super().getaddrinfo(host, port, *args, **kw)
        self.asked += 1
        if self.asked == 1:
            family, kind, proto, name, (_, number) = answer[0]
            return [(family, kind, proto, name, ("192.0.2.1", number))]  # TEST-NET-1
        return answer


async def test_a_blob_goes_to_the_addresses_checked_not_to_the_name_resolved_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The check resolved the name, the connection resolved it again: a name that answers a
    public address to the check and a loopback one to the connection got the node to connect
    to a loopback port, and the errors told an open one from a closed one (a review's find)."""
    counting = Counting()
    port = await nursery.start(counting.serve)
    trio.socket.set_custom_hostname_resolver(Rebinding())
    try:
        http_port = await nursery.start(_node(tmp_path).run)
        digest = "sha256:" + hashlib.sha256(b"any").hexdigest()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as c:
            got = await c.get(f"/v2/x/blobs/{digest}?ns={NAME}:{port}")
            assert got.status_code == 502
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert counting.connections == 0, "the node connected to a loopback port the name rebound to"


async def test_an_access_check_at_a_named_origin_is_checked_too(nursery: trio.Nursery) -> None:
    """Content private to a registry a client named is checked there again (a HEAD with the
    next client's credentials): that origin is checked as it was when named (a review's find:
    the access check went wherever the name resolved to now)."""
    counting = Counting()
    port = await nursery.start(counting.serve)
    upstreams = Upstreams(UpstreamConfig(mapping={}, default="http://127.0.0.1:9"))
    gate = AuthGate(upstreams)
    trio.socket.set_custom_hostname_resolver(Loopback())
    try:
        with pytest.raises(UpstreamError, match="loopback"):
            await gate.check(f"https://{NAME}:{port}", "x", "blobs", "sha256:" + "a" * 64, {})
    finally:
        trio.socket.set_custom_hostname_resolver(None)
        await upstreams.aclose()
    assert counting.connections == 0
