"""The upstream registry client: which registry a request goes to, and the HTTP calls to it."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import trio

from peer.front.routes import InvalidNamespace
from wire.names import registry_host

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
MAX_REDIRECTS = 5

# Request headers a client sends that the upstream must see. Authorization is passed through for
# the registry's own auth (never logged, never stored); Accept picks the manifest format.
FORWARDED_REQUEST_HEADERS = ("authorization", "accept", "user-agent")
# Response headers of an upstream refusal that the client needs (the token flow starts from
# WWW-Authenticate).
FORWARDED_ERROR_HEADERS = ("www-authenticate", "content-type", "docker-distribution-api-version")

# What h11 (ours and httpx's) sends: a token as the name; a value of printable ASCII with blanks
# only inside. A client may send more (obs-text bytes >= 0x80, control characters), which h11
# parses but neither encodes again.
_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")


@dataclass(frozen=True, slots=True)
class UpstreamRefusal:
    """A 4xx answer from the upstream, passed to the client as it came (401 + WWW-Authenticate)."""

    status: int
    headers: dict[str, str]
    body: bytes


class UnforwardableHeader(ValueError):
    """A request header HTTP/1.1 cannot carry to the upstream as it is; the message names the
    header, never its value (it may be a credential)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name[:50]!r} header cannot be forwarded: only printable ASCII can")
        self.name = name


def check_forwardable(headers: Mapping[str, str]) -> None:
    """Check that every header can be sent upstream as it is.

    Raises:
        UnforwardableHeader: for the first one that cannot.
    """
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise UnforwardableHeader(name)


class UpstreamError(Exception):
    """The upstream could not be reached or broke off; the message names it."""

    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason


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
    if start.may_lead_inside(host):
        return
    where = _authority(host, port)
    try:
        with trio.fail_after(timeout):
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except trio.TooSlowError:
        raise UpstreamError(
            upstream, f"redirected to {where}: no address in {timeout:.0f}s"
        ) from None
    except (OSError, ValueError) as exc:  # gaierror; the IDNA codec refusing a label
        raise UpstreamError(
            upstream, f"redirected to {where}, which does not resolve: {exc}"
        ) from None
    for *_, sockaddr in infos:
        _refuse_internal(upstream, where, str(sockaddr[0]))


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


def _refuse_internal(upstream: str, where: str, address: str) -> None:
    kind = internal_address_kind(address)
    if kind is not None:
        raise UpstreamError(
            upstream, f"redirected to {where}, at a {kind} address ({address[:60]}): refused"
        )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    mapping: Mapping[str, str]
    default: str
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0


class Upstreams:
    """Maps `?ns=` values to registry base URLs and talks to them over one pooled client."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.stall_timeout,
            write=config.stall_timeout,
            pool=config.stall_timeout,
        )
        # Redirects (registries send blob requests to object storage) are followed by `_send`,
        # which checks where each leads.
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def check_namespace(self, namespace: str | None) -> None:
        """Refuse a `?ns=` that is not configured (`--upstream`) and names this host or a
        link-local service by its address (or `localhost`): the client chooses it, and the
        node would fetch `https://<ns>/v2/...` from there. Names that merely resolve to such
        an address are not caught here (the redirect checks resolve; this does not).

        Raises:
            InvalidNamespace: the message says why.
        """
        if namespace is None or namespace in self.config.mapping or namespace == DOCKER_HUB:
            return
        host = registry_host(namespace)
        kind = "loopback" if host.lower() == "localhost" else internal_address_kind(host)
        if kind == "unreadable":
            # The resolver also reads 127.1, 0 and 2130706433 as IPv4 addresses (inet_aton).
            with contextlib.suppress(OSError):
                kind = internal_address_kind(socket.inet_ntoa(socket.inet_aton(host)))
        if kind is not None and kind != "unreadable":
            raise InvalidNamespace(
                f"ns {namespace[:100]!r} names a {kind} address: only an --upstream mapping "
                "may point the node at one"
            )

    def base_url(self, namespace: str | None) -> str:
        """The registry for a `?ns=` value (None: the default upstream)."""
        if namespace is None:
            return self.config.default.rstrip("/")
        if namespace in self.config.mapping:
            return self.config.mapping[namespace].rstrip("/")
        if namespace == DOCKER_HUB:
            return DOCKER_HUB_URL
        return f"https://{namespace}"

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        namespace: str | None,
        path: str,
        headers: Mapping[str, str],
    ) -> AsyncIterator[httpx.Response]:
        """Send a request to the upstream for `namespace`; the body is streamed by the caller.

        Raises:
            UpstreamError: the upstream could not be reached or the connection failed.
        """
        async with self.open_at(method, self.base_url(namespace), path, headers) as response:
            yield response

    @contextlib.asynccontextmanager
    async def open_at(
        self,
        method: str,
        base: str,
        path: str,
        headers: Mapping[str, str],
    ) -> AsyncIterator[httpx.Response]:
        """Like `open`, at the registry whose base URL is `base` (one recorded by the node,
        never one a client chose). Redirects are followed, at most MAX_REDIRECTS, and only to
        where `check_redirect_target` allows.

        Raises:
            UpstreamError: the upstream could not be reached, the connection failed, or a
                redirect was refused.
        """
        try:
            check_forwardable(headers)
            request = self._client.build_request(method, base + path, headers=dict(headers))
        except UnforwardableHeader as exc:
            raise UpstreamError(base, str(exc)) from None
        except httpx.InvalidURL as exc:  # not an HTTPError: raised before anything is sent
            raise UpstreamError(base, f"not a URL we can fetch: {exc}") from None
        response = await self._send(base, request)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, base: str, request: httpx.Request) -> httpx.Response:
        """Send `request` and follow its redirects; the last answer, its body not read.

        httpx builds each next request (`next_request`): without the Authorization header when
        the redirect leaves the origin (as the OCI spec requires), a GET after a 303.
        """
        start: RedirectStart | None = None
        for _ in range(MAX_REDIRECTS + 1):
            url = request.url
            port = url.port or (443 if url.scheme == "https" else 80)
            if start is not None:
                if url.scheme not in ("http", "https"):
                    raise UpstreamError(base, f"redirected to a {url.scheme[:20]!r} URL: refused")
                timeout = self.config.connect_timeout
                await check_redirect_target(base, start, url.host, port, timeout=timeout)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise UpstreamError(base, _describe(exc)) from exc
            try:
                # httpx connects by resolving the name again: what it reached is checked too
                # (before the body is read; the request itself has gone to it by then).
                address = _server_address(response)
                if start is None:
                    start = RedirectStart.reached_at(url.host, address)
                elif address is not None:
                    check_connected_address(base, start, url.host, port, address)
                if response.next_request is None:
                    return response
                request = response.next_request
            except BaseException:
                await response.aclose()
                raise
            await response.aclose()
        raise UpstreamError(base, f"more than {MAX_REDIRECTS} redirects")

    async def read_body(self, response: httpx.Response, limit: int) -> bytes:
        """Read a small body (manifest, error document) of at most `limit` bytes.

        Raises:
            UpstreamError: the connection failed, or the body is larger than `limit`.
        """
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in response.aiter_raw():
                total += len(chunk)
                if total > limit:
                    raise UpstreamError(str(response.url.host), f"body over {limit} bytes")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise UpstreamError(str(response.url.host), _describe(exc)) from exc
        return b"".join(chunks)


def _server_address(response: httpx.Response) -> str | None:
    """The IP address of the connection an answer came on (httpcore's network stream tells)."""
    stream = response.extensions.get("network_stream")
    try:
        peer = stream.get_extra_info("server_addr") if stream is not None else None
    except OSError:  # the connection is already gone
        return None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def pick_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The subset of `headers` (case-insensitive) named in `names`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in names if name in lowered}
