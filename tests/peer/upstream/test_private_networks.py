"""Where a registry a client names may lead the node, beyond loopback and link-local (SSRF).

A helper's probe of 2026-12-07 found three ways through: `?ns=` naming this host by its LAN
address, cloud metadata services outside 169.254/16 (AWS's over IPv6, Alibaba Cloud's), and a
registry on the Internet redirecting to a service on the node's private network, whose answer
came back to the client as a manifest. A registry on a private network may still redirect to
object storage there, and one an operator configured may redirect anywhere but inside.

This host's own address is made in a network namespace the test creates (`unshare --net`, gone
with its process): a veth pair with 10.77.0.1 and fd77::1.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from peer.upstream.errors import UpstreamError
from peer.upstream.redirects import (
    RedirectStart,
    check_connected_address,
    check_redirect_target,
    internal_address_kind,
)

PUBLIC = "93.184.216.34"  # an address on the Internet (no packet goes there: numbers only)
PRIVATE_TARGETS = [
    "10.9.9.2",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.1.1",
    "fd12::1",
    "64:ff9b::a09:902",  # 10.9.9.2 through NAT64
    "64:ff9b:1::a09:902",  # an operator's local NAT64 prefix
    "2002:a09:902::1",  # 10.9.9.2 through 6to4
]


@pytest.mark.parametrize("address", ["fd00:ec2::254", "100.100.100.200", "::ffff:100.100.100.200"])
def test_cloud_metadata_outside_link_local_is_internal(address: str) -> None:
    assert internal_address_kind(address) == "cloud metadata"


@pytest.mark.parametrize("target", PRIVATE_TARGETS)
async def test_a_registry_a_client_named_on_the_internet_may_not_redirect_into_a_private_network(
    target: str,
) -> None:
    start = RedirectStart.reached_at("evil.example", PUBLIC, named_by_client=True)
    with pytest.raises(UpstreamError, match="private address"):
        await check_redirect_target("https://evil.example", start, target, 8080, timeout=5)
    # DNS that answered a public address to the check and a private one to the connection:
    with pytest.raises(UpstreamError, match="private address"):
        check_connected_address("https://evil.example", start, "cdn.example", 443, target)


async def test_a_registry_a_client_named_on_the_internet_may_redirect_to_the_internet() -> None:
    start = RedirectStart.reached_at("registry.example", PUBLIC, named_by_client=True)
    await check_redirect_target("https://registry.example", start, "93.184.216.35", 443, timeout=5)
    check_connected_address("https://registry.example", start, "cdn.example", 443, "1.1.1.1")
    check_connected_address("https://registry.example", start, "cdn", 443, "64:ff9b::101:101")


@pytest.mark.parametrize("target", PRIVATE_TARGETS)
async def test_a_private_registry_may_redirect_to_storage_on_a_private_network(
    target: str,
) -> None:
    start = RedirectStart.reached_at("harbor.corp", "10.0.0.5", named_by_client=True)
    await check_redirect_target("https://harbor.corp", start, target, 9000, timeout=5)
    check_connected_address("https://harbor.corp", start, "minio.corp", 9000, target)


async def test_a_configured_registry_may_redirect_to_a_private_network() -> None:
    """An operator's --upstream (or Docker Hub, or the default) is trusted to that extent."""
    start = RedirectStart.reached_at("registry.example", PUBLIC)
    await check_redirect_target("https://registry.example", start, "10.0.0.7", 9000, timeout=5)


async def test_an_unknown_registry_address_is_taken_as_public() -> None:
    """Where the connection's address is not known, a client-named registry allows less."""
    start = RedirectStart.reached_at("evil.example", None, named_by_client=True)
    with pytest.raises(UpstreamError, match="private address"):
        await check_redirect_target("https://evil.example", start, "10.9.9.2", 80, timeout=5)


_IN_NAMESPACE = textwrap.dedent(
    """
    import trio
    from peer.front.routes import InvalidNamespace
    from peer.upstream.client import UpstreamConfig, Upstreams
    from peer.upstream.errors import UpstreamError
    from peer.upstream.redirects import (
        RedirectStart, check_named_registry, check_redirect_target, internal_address_kind,
    )

    for address in ("10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2", "::ffff:10.77.0.1"):
        print(address, internal_address_kind(address, this_host=True))
    upstreams = Upstreams(UpstreamConfig(mapping={}, default="http://127.0.0.1:1"))
    for ns in ("10.77.0.1:5000", "[fd77::1]:5000"):
        try:
            upstreams.check_namespace(ns)
            print(ns, "accepted")
        except InvalidNamespace as exc:
            print(ns, "refused:", exc)

    async def main() -> None:
        try:
            await check_named_registry("https://10.77.0.1", "10.77.0.1", 443, timeout=5)
            print("named accepted")
        except UpstreamError as exc:
            print("named refused:", exc)
        start = RedirectStart.reached_at("harbor.corp", "10.77.0.9", named_by_client=True)
        try:
            await check_redirect_target("https://harbor.corp", start, "10.77.0.1", 80, timeout=5)
            print("redirect accepted")
        except UpstreamError as exc:
            print("redirect refused:", exc)

        # An operator's registry may send the node to this host (a Kubernetes service
        # address is one of its interfaces under IPVS).
        configured = RedirectStart.reached_at("registry.svc", "10.77.0.9")
        await check_redirect_target("http://registry.svc", configured, "10.77.0.1", 80, timeout=5)
        print("configured redirect accepted")

    trio.run(main)
    """
)


def test_this_hosts_own_addresses_are_refused_like_its_loopback() -> None:
    """Its LAN address reaches the node's admin port and every other service of the host.
    `ip_nonlocal_bind` is set in the namespace: binding any address then succeeds, and must not
    make every address this host's."""
    setup = (
        "ip link add v0 type veth peer name v1 && ip addr add 10.77.0.1/24 dev v0"
        " && ip addr add fd77::1/64 dev v0 nodad && ip link set v0 up && ip link set v1 up"
        ' && sysctl -qw net.ipv4.ip_nonlocal_bind=1 && exec "$0" -c "$1"'
    )
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", setup, sys.executable, _IN_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "10.77.0.1 this host's",
        "10.77.0.2 None",
        "fd77::1 this host's",
        "fd77::2 None",
        "::ffff:10.77.0.1 this host's",
    ]
    assert lines[5].startswith("10.77.0.1:5000 refused:"), lines[5]
    assert lines[6].startswith("[fd77::1]:5000 refused:"), lines[6]
    assert lines[7].startswith("named refused:") and "this host's" in lines[7], lines[7]
    assert lines[8].startswith("redirect refused:") and "this host's" in lines[8], lines[8]
    assert lines[9] == "configured redirect accepted"
