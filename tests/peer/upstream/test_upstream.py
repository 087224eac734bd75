"""The upstream client: where a redirect may lead (the address rules, and `Upstreams.open_at`
following redirects itself), and the access check's HEAD through it."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from peer.access.auth_gate import AuthGate
from peer.front.http_server import HttpConnection, Request
from peer.upstream.client import MAX_REDIRECTS, UpstreamConfig, Upstreams
from peer.upstream.errors import UpstreamError
from peer.upstream.redirects import (
    RedirectStart,
    check_redirect_target,
    internal_address_kind,
    same_host,
)
from tests.peer.scripted_server import (
    INTERNAL_TARGETS,
    RebindingResolver,
    ScriptedServer,
    redirect_to,
    reply,
)

SECRET = b'{"AccessKeyId":"ASIAINTERNAL","SecretAccessKey":"metadata-credential"}'

# ---- which addresses are internal ---------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%lo", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated) form
        ("not an address", "unreadable"),
    ],
)
def test_internal_addresses(address: str, kind: str) -> None:
    assert internal_address_kind(address) == kind


@pytest.mark.parametrize(
    "address",
    # On-premises registries redirect to object storage on private addresses: allowed.
    [
        *("10.0.0.1", "172.16.5.4", "192.168.1.10", "100.64.0.1", "8.8.8.8", "fd00::1"),
        *("2001:db8::1", "::ffff:10.0.0.1", "::ffff:8.8.8.8"),
    ],
)
def test_private_and_public_addresses_are_not_internal(address: str) -> None:
    assert internal_address_kind(address) is None


_INTERNAL_V4 = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16")]
_INTERNAL_V4.append(ipaddress.ip_network("224.0.0.0/4"))


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_internal_exactly_in_the_internal_networks(
    address: ipaddress.IPv4Address,
) -> None:
    internal = any(address in network for network in _INTERNAL_V4)
    assert (internal_address_kind(str(address)) is not None) == internal
    # Its IPv4-mapped IPv6 form reaches the same place: judged the same.
    assert internal_address_kind(f"::ffff:{address}") == internal_address_kind(str(address))


@given(
    st.one_of(
        st.ip_addresses(network="fe80::/10"),
        st.ip_addresses(network="ff00::/8"),
        st.ip_addresses(network="127.0.0.0/8"),
        st.ip_addresses(network="169.254.0.0/16"),
    )
)
def test_link_local_multicast_and_loopback_are_internal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert internal_address_kind(str(address)) is not None


@given(
    st.one_of(
        st.ip_addresses(network="10.0.0.0/8"),
        st.ip_addresses(network="172.16.0.0/12"),
        st.ip_addresses(network="192.168.0.0/16"),
        st.ip_addresses(network="fc00::/7"),
        st.ip_addresses(network="2000::/3"),
    )
)
def test_private_and_global_networks_are_not_internal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert internal_address_kind(str(address)) is None


def test_same_host() -> None:
    assert same_host("localhost", "LOCALHOST.")
    assert same_host("127.0.0.1", "127.0.0.1")
    assert same_host("::1", "0:0:0:0:0:0:0:1")
    assert not same_host("localhost", "127.0.0.1")  # by name or by IP, not by resolving
    assert not same_host("127.0.0.2", "127.0.0.1")


async def test_a_redirect_stays_on_an_internal_registrys_own_host_only() -> None:
    local = RedirectStart("localhost", internal=True)
    await check_redirect_target("http://localhost:5000", local, "localhost", 9000, timeout=5)
    with pytest.raises(UpstreamError, match="loopback"):
        await check_redirect_target("http://localhost:5000", local, "127.0.0.1", 9000, timeout=5)
    # A registry the node reached at a public address cannot redirect to its own name once
    # that name resolves to loopback (DNS rebinding): only a registry that is itself internal
    # may redirect within its host.
    public = RedirectStart("localhost", internal=False)
    with pytest.raises(UpstreamError, match="loopback"):
        await check_redirect_target("http://localhost:5000", public, "localhost", 9000, timeout=5)


async def test_a_redirect_target_that_does_not_resolve_is_refused() -> None:
    start = RedirectStart("127.0.0.2", internal=True)
    with pytest.raises(UpstreamError, match=r"http://127\.0\.0\.2"):
        await check_redirect_target("http://127.0.0.2", start, "a..b", 80, timeout=5)


# ---- Upstreams.open_at ---------------------------------------------------------------------


async def secret(conn: HttpConnection, request: Request) -> None:
    await reply(conn, request, 200, [("content-type", "application/json")], SECRET)


@pytest.fixture
async def internal(nursery: trio.Nursery) -> ScriptedServer:
    """A service on the node's own loopback (admin /metrics, a metadata service)."""
    server = ScriptedServer("127.0.0.1", secret)
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    client = Upstreams(UpstreamConfig(mapping={}, default="http://127.0.0.1:1", connect_timeout=2))
    try:
        yield client
    finally:
        await client.aclose()


async def _open(upstreams: Upstreams, method: str, base: str, path: str) -> tuple[int, bytes]:
    async with upstreams.open_at(method, base, path, {"authorization": "Bearer t"}) as response:
        return response.status_code, await upstreams.read_body(response, 1 << 16)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("target", "kind"),
    INTERNAL_TARGETS,
)
async def test_open_at_refuses_a_redirect_to_an_internal_address(
    nursery: trio.Nursery,
    internal: ScriptedServer,
    upstreams: Upstreams,
    method: str,
    target: str,
    kind: str,
) -> None:
    evil = ScriptedServer("127.0.0.2", redirect_to(lambda _: target.format(port=internal.port)))
    await nursery.start(evil.serve)
    with pytest.raises(UpstreamError) as caught:
        await _open(upstreams, method, evil.url, "/v2/x/manifests/latest")
    assert caught.value.upstream == evil.url
    assert kind in caught.value.reason
    assert len(evil.seen) == 1
    assert internal.seen == []


async def test_open_at_never_reads_back_a_redirect_target_that_rebinds_to_loopback(
    nursery: trio.Nursery, internal: ScriptedServer, upstreams: Upstreams
) -> None:
    # The name passes the check (a public address), then httpx resolves it again, to loopback.
    # The request reaches the internal service (httpx offers no hook between its connect and
    # its send), but the address the answer came from is checked before its body is read.
    evil = ScriptedServer(
        "127.0.0.2", redirect_to(lambda _: f"http://rebind.test:{internal.port}/metrics")
    )
    await nursery.start(evil.serve)
    resolver = RebindingResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    with pytest.raises(UpstreamError, match="loopback") as caught:
        await _open(upstreams, "GET", evil.url, "/v2/x/manifests/latest")
    assert caught.value.upstream == evil.url
    assert resolver.asked == 2


async def test_open_at_follows_a_redirect_on_the_registrys_own_host(
    nursery: trio.Nursery, upstreams: Upstreams
) -> None:
    storage = ScriptedServer("127.0.0.1", secret)
    await nursery.start(storage.serve)
    registry = ScriptedServer("127.0.0.1")

    async def answer(conn: HttpConnection, request: Request) -> None:
        if request.target == b"/here":
            await reply(conn, request, 200, [], b"same origin")
        elif request.target == b"/v2/same":
            await reply(conn, request, 307, [("location", "/here")], b"")
        else:
            where = f"http://127.0.0.1:{storage.port}/object?sig=1"
            await reply(conn, request, 307, [("location", where)], b"")

    registry.answer = answer
    await nursery.start(registry.serve)
    assert await _open(upstreams, "GET", registry.url, "/v2/x/blobs/y") == (200, SECRET)
    # httpx's next_request leaves the credentials behind when the redirect leaves the origin,
    # and keeps them within it.
    assert registry.seen[0].headers["authorization"] == "Bearer t"
    assert "authorization" not in storage.seen[0].headers
    assert await _open(upstreams, "GET", registry.url, "/v2/same") == (200, b"same origin")
    assert registry.seen[-1].headers["authorization"] == "Bearer t"


async def test_open_at_follows_at_most_five_redirects(
    nursery: trio.Nursery, upstreams: Upstreams
) -> None:
    loop = ScriptedServer("127.0.0.1", redirect_to(lambda r: r.target.decode() + "x"))
    await nursery.start(loop.serve)
    with pytest.raises(UpstreamError, match=f"more than {MAX_REDIRECTS} redirects"):
        await _open(upstreams, "GET", loop.url, "/v2/")
    assert len(loop.seen) == MAX_REDIRECTS + 1


@pytest.mark.parametrize("location", ["http://[/x", "ftp://example.com/x", "http://a..b/x"])
async def test_open_at_refuses_a_redirect_it_cannot_follow(
    nursery: trio.Nursery, upstreams: Upstreams, location: str
) -> None:
    evil = ScriptedServer("127.0.0.2", redirect_to(lambda _: location))
    await nursery.start(evil.serve)
    with pytest.raises(UpstreamError) as caught:
        await _open(upstreams, "GET", evil.url, "/v2/")
    assert caught.value.upstream == evil.url


# ---- the access check ----------------------------------------------------------------------


async def test_an_access_check_redirected_to_an_internal_address_is_not_accepted(
    nursery: trio.Nursery, internal: ScriptedServer
) -> None:
    evil = ScriptedServer(
        "127.0.0.2", redirect_to(lambda r: f"http://127.0.0.1:{internal.port}{r.target.decode()}")
    )
    await nursery.start(evil.serve)
    # An --upstream (127.0.0.2 stands for another host): an origin no --upstream configures
    # is checked before it is connected to (test_client_named_registry.py).
    config = UpstreamConfig(mapping={"evil.test": evil.url}, default="http://127.0.0.1:1")
    upstreams = Upstreams(config)
    gate = AuthGate(upstreams)
    try:
        for _ in range(2):  # and nothing was remembered as accepted
            with pytest.raises(UpstreamError, match="loopback"):
                await gate.check(evil.url, "org/app", "blobs", "sha256:" + "0" * 64, {})
    finally:
        await upstreams.aclose()
    assert len(evil.seen) == 2
    assert internal.seen == []
