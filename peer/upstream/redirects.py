"""Where a registry's redirect may lead the node (no loopback, link-local, ...): SSRF guards."""

from __future__ import annotations

import ipaddress
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
# localhost:9000). Private ranges (10/8, 192.168/16, fc00::/7) are allowed: on-premises
# registries redirect to object storage there.
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


def internal_address_kind(address: str) -> str | None:
    """What makes `address` (an IP address as getaddrinfo or getpeername give it, with an
    IPv6 scope or not) one a redirect must not lead to: "loopback", "link-local",
    "unspecified" (0.0.0.0/8, ::) or "multicast", also in IPv4-mapped (::ffff:a.b.c.d) and
    IPv4-compatible (::a.b.c.d) IPv6 form; "unreadable" for text that is no IP address; None
    when it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unreadable"
    kind = _kind(ip)
    if kind is None and isinstance(ip, ipaddress.IPv6Address):
        # Python 3.11 does not look inside these forms; a socket reaches the IPv4 address.
        if ip.ipv4_mapped is not None:
            return _kind(ip.ipv4_mapped)
        if int(ip) >> 32 == 0:
            return _kind(ipaddress.IPv4Address(int(ip)))
    return kind


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    return None


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
    the URL names it, and whether the node's connection to it reached an internal address."""

    host: str
    internal: bool

    @classmethod
    def reached_at(cls, host: str, address: str | None) -> RedirectStart:
        """The registry at URL host `host`, connected to at `address` (None, or no IP address:
        not known, taken as not internal, which allows less)."""
        kind = None if address is None else internal_address_kind(address)
        return cls(host, kind not in (None, "unreadable"))

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
        await _check_resolved(upstream, host, port, "redirected to", timeout)


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
    return await _check_resolved(upstream, host, port, "named", timeout)


def check_named_address(upstream: str, host: str, port: int, address: str) -> None:
    """The address a connection to a registry a client named reached (DNS that answered
    otherwise to `check_named_registry`).

    Raises:
        UpstreamError: the address is internal.
    """
    _refuse_internal(upstream, _authority(host, port), address, "named")


async def _check_resolved(
    upstream: str, host: str, port: int, how: str, timeout: float
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
        _refuse_internal(upstream, where, address, how)
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
        _refuse_internal(upstream, _authority(host, port), address)


def _refuse_internal(upstream: str, where: str, address: str, how: str = "redirected to") -> None:
    kind = internal_address_kind(address)
    if kind is not None:
        raise UpstreamError(
            upstream, f"{how} {where}, at a {kind} address ({address[:60]}): refused"
        )
