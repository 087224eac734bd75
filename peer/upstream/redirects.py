"""Where a registry's redirect may lead the node (no loopback, link-local, ...): SSRF guards."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import trio

from peer.upstream.errors import UpstreamError

# ---- where a redirect may lead -------------------------------------------------------------
#
# A registry a client names answers with a redirect, and the node fetches what it points to and
# passes the bytes on: pointed at the node's own loopback (its admin port) or the link-local
# network (a cloud metadata service), that reads internal services back to the client (SSRF).
# So a redirect may not lead to an internal address, unless it stays on the host of a registry
# that is itself internal (an operator's registry at localhost:5000 sending blobs to MinIO at
# localhost:9000). Nor may it lead to this host's own addresses on other interfaces (its LAN
# address reaches the same ports as its loopback), nor to the cloud metadata services that sit
# outside the link-local range. Private ranges (10/8, 192.168/16, fc00::/7) are allowed where
# the redirect comes from a registry on a private network itself, or one an operator configured:
# on-premises registries redirect to object storage there. A registry only a client named, at
# a public address, may not lead the node into them (an attacker's registry on the Internet
# redirecting to a service beside the node read its answer back to the client: a helper's
# probe, 2026-12-07).
#
# A target is checked by resolving its name before connecting, and again by the address the
# connection reached, since the connection resolves the name anew and DNS can answer otherwise
# the second time (DNS rebinding). What is left of that risk: blob_stream checks before sending
# anything, so a rebound name gets a TCP handshake at most; httpx has no hook between connect
# and send, so there the internal service gets the request (GET or HEAD, without the registry's
# credentials once the origin changed) but its answer is refused unread. An HTTP proxy httpx
# takes from the environment is what its connections reach: behind one on loopback, redirects
# to other hosts are refused on the manifest path (blob_stream uses no proxy).

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host" to Linux's connect
# IPv6 forms that a gateway turns into an IPv4 address: NAT64's well-known prefix (the
# address in its last 32 bits; RFC 6052) and its local-use one (RFC 8215), and 6to4 (2002::/16)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")

# Cloud metadata services outside 169.254/16 (which "link-local" covers): AWS's instance
# metadata over IPv6 (Nitro instances) and Alibaba Cloud's. They answer whoever runs on the
# host with its role's credentials, and a DaemonSet's node runs in the host's network.
_CLOUD_METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)


def internal_address_kind(address: str, *, this_host: bool = False) -> str | None:
    """What makes `address` (an IP address as getaddrinfo or getpeername give it, with an
    IPv6 scope or not) one a redirect must not lead to: "loopback", "link-local",
    "unspecified" (0.0.0.0/8, ::), "multicast", "cloud metadata", and with `this_host` "this
    host's" (an address of one of its interfaces: asked only where a client named the
    registry, since an operator's may live there, as a Kubernetes service address does under
    IPVS), also in IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) IPv6 form;
    "unreadable" for text that is no IP address; None when it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unreadable"
    kind = _kind(ip)
    reached = _unmapped(ip)  # the address a socket reaches
    if kind is None and reached != ip:
        kind = _kind(reached)
    if kind is None and this_host and _is_this_hosts(reached):
        kind = "this host's"
    return kind


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d)
    IPv6 one, which a socket reaches and Python 3.11 does not look into; else `ip` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if int(ip) >> 32 == 0:
            return ipaddress.IPv4Address(int(ip))
    return ip


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip in _CLOUD_METADATA:
        return "cloud metadata"
    return None


def _is_this_hosts(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is an address of one of this host's interfaces. The kernel routes such an
    address to the host itself and picks it as its own source: a UDP socket "connected" to it
    (no packet is sent) is bound to the same address. (Binding to it would be the plainer
    test, but `net.ipv4.ip_nonlocal_bind` lets any address be bound.)"""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))
            return bool(ipaddress.ip_address(probe.getsockname()[0]) == ip)
    except (OSError, ValueError):  # no route there (or no IPv6 in this kernel): not this host's
        return False


def is_public(address: str) -> bool:
    """Whether `address` (as `internal_address_kind` takes it) is on the public Internet: not
    private (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), reserved or internal,
    also where it is an IPv4 one in NAT64 or 6to4 form (a review, 2026-12-07)."""
    try:
        ip = _unmapped(ipaddress.ip_address(address))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:  # an operator's own translation prefix: its network's
            return False
        inside = ip.sixtofour
        if ip in _NAT64:  # the IPv4 address in its last 32 bits
            inside = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inside is not None:  # the IPv4 address a gateway sends it on to
            return inside.is_global
    return ip.is_global


def same_host(a: str, b: str) -> bool:
    """Whether two URL hosts name the same host: the same name (case and a final dot aside) or
    the same IP address. Names are not resolved: "localhost" is not "127.0.0.1"."""
    return _host_key(a) == _host_key(b)


def _host_key(host: str) -> str:
    host = host.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


@dataclass(frozen=True, slots=True)
class RedirectStart:
    """The registry a request started at, which its redirects are judged against: its host as
    the URL names it, whether the node's connection to it reached an internal address,
    whether only a client named it (its redirects may not lead to this host either), and
    whether its redirects may lead to public addresses only (such a registry, not reached on
    a private network)."""

    host: str
    internal: bool
    named: bool = False
    public_only: bool = False

    @classmethod
    def reached_at(
        cls, host: str, address: str | None, *, named_by_client: bool = False
    ) -> RedirectStart:
        """The registry at URL host `host`, connected to at `address` (None, or no IP address:
        not known, taken as neither internal nor private, which allows less)."""
        kind = None if address is None else internal_address_kind(address)
        private = address is not None and kind != "unreadable" and not is_public(address)
        internal = kind not in (None, "unreadable")
        return cls(host, internal, named_by_client, named_by_client and not private)

    def may_lead_inside(self, host: str) -> bool:
        """Whether a redirect to `host` may reach internal addresses: only when it stays on the
        registry's own host and the registry is itself internal. A registry reached at a public
        address has no internal host of its own: its name resolving to loopback later is DNS
        rebinding."""
        return self.internal and same_host(self.host, host)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def check_redirect_target(
    upstream: str, start: RedirectStart, host: str, port: int, *, timeout: float
) -> None:
    """Check, before connecting, where a redirect from `upstream` to `host`:`port` leads: every
    address the host resolves to must be allowed (see `RedirectStart.may_lead_inside`).

    The connection resolves the name again; DNS that answers otherwise the second time (DNS
    rebinding) passes this check, so a caller that can also checks the address it connected
    to, before sending anything (`check_connected_address`).

    Raises:
        UpstreamError: naming `upstream`: the host does not resolve (in `timeout` seconds),
            or resolves to an internal address.
    """
    if not start.may_lead_inside(host):
        await _check_resolved(
            upstream, host, port, "redirected to", timeout, start.named, start.public_only
        )


async def check_named_registry(upstream: str, host: str, port: int, *, timeout: float) -> list[str]:
    """Check, before connecting, a registry a client named (a `?ns=` no --upstream maps):
    every address its name resolves to must be outside this host and its link, as for a
    redirect. Connecting first told an open loopback port from a closed one by the error.
    Returns the addresses checked: a caller that can connects to them, not to the name
    resolved again (DNS that answers otherwise the second time).

    Raises:
        UpstreamError: naming `upstream`: the name does not resolve, or resolves to an
            internal address.
    """
    return await _check_resolved(upstream, host, port, "named", timeout, named=True)


def check_named_address(upstream: str, host: str, port: int, address: str) -> None:
    """The address a connection to a registry a client named reached (DNS that answered
    otherwise to `check_named_registry`).

    Raises:
        UpstreamError: the address is internal.
    """
    _refuse_internal(upstream, _authority(host, port), address, "named", named=True)


async def _check_resolved(
    upstream: str,
    host: str,
    port: int,
    how: str,
    timeout: float,
    named: bool = False,
    public_only: bool = False,
) -> list[str]:
    where = _authority(host, port)
    try:
        with trio.fail_after(timeout):
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except trio.TooSlowError:
        raise UpstreamError(upstream, f"{how} {where}: no address in {timeout:.0f}s") from None
    except (OSError, ValueError) as exc:  # gaierror; the IDNA codec refusing a label
        raise UpstreamError(upstream, f"{how} {where}, which does not resolve: {exc}") from None
    addresses = [str(sockaddr[0]) for *_, sockaddr in infos]
    for address in addresses:
        _refuse_internal(upstream, where, address, how, named=named, public_only=public_only)
    return list(dict.fromkeys(addresses))  # each once, in the resolver's order


def check_connected_address(
    upstream: str, start: RedirectStart, host: str, port: int, address: str
) -> None:
    """Check the address a connection for a redirect (from `upstream` to `host`:`port`)
    reached, as `check_redirect_target` checks the ones the name resolved to.

    Raises:
        UpstreamError: naming `upstream`: the address is internal.
    """
    if not start.may_lead_inside(host):
        where = _authority(host, port)
        _refuse_internal(upstream, where, address, named=start.named, public_only=start.public_only)


def _refuse_internal(
    upstream: str,
    where: str,
    address: str,
    how: str = "redirected to",
    *,
    named: bool = False,
    public_only: bool = False,
) -> None:
    kind = internal_address_kind(address, this_host=named)
    if kind is None and public_only and not is_public(address):
        raise UpstreamError(
            upstream,
            f"{how} {where}, at a private address ({address[:60]}): refused (a registry a "
            "client named, at a public address, may not lead the node into a private network)",
        )
    if kind is not None:
        raise UpstreamError(
            upstream, f"{how} {where}, at a {kind} address ({address[:60]}): refused"
        )
