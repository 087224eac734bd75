"""The upstream registry client: which registry a request goes to, and the HTTP calls to it."""

from __future__ import annotations

import contextlib
import http.cookiejar
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import trio

from peer.front.routes import InvalidNamespace
from peer.upstream.body_budget import LIST_BODIES, MANIFEST_BODIES, BodyBudget, BodyHold
from peer.upstream.errors import RegistriesBusy, UpstreamError, UpstreamRefusal
from peer.upstream.headers import (
    FORWARDED_ERROR_HEADERS,
    UnforwardableHeader,
    check_forwardable,
    pick_headers,
)
from peer.upstream.redirects import (
    RedirectStart,
    check_connected_address,
    check_named_address,
    check_named_registry,
    check_redirect_target,
    internal_address_kind,
)
from wire.names import registry_host

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
MAX_REDIRECTS = 5
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an upstream's error document read and passed on
UNHELD_BODY_LIMIT = 64 * 1024  # bodies read without a hold on a budget are no larger
BODY_DEADLINE = 60.0  # seconds a whole small body may take (4 MiB at 1 Mbit/s: 34 s)
MAX_CONNECTIONS = 200  # to registries, for everything but blob downloads (their own streams)
NAMED_CONNECTIONS = MAX_CONNECTIONS // 2  # of those, open to registries clients name at most


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    mapping: Mapping[str, str]
    default: str
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0
    client_registries: bool = True  # may a ?ns= name a registry none of the above is?


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that takes and gives none. One client serves every client of the node:
    httpx's default jar kept a session cookie a registry gave in answer to one client's
    credentials and sent it with every other client's requests (an anonymous access check
    then passed where the registry takes its cookie as a login), and grew with every cookie
    any registry set."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


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
        # Bytes of registries' bodies held in memory (`peer/upstream/body_budget.py`).
        self.manifest_bodies = BodyBudget(MANIFEST_BODIES, MANIFEST_BODIES // 2)
        self.list_bodies = BodyBudget(LIST_BODIES, LIST_BODIES // 2)
        self.named_requests = 0  # open to registries clients name (NAMED_CONNECTIONS at most)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=50),
            cookies=_no_cookies(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def check_namespace(self, namespace: str | None) -> None:
        """Refuse a `?ns=` that is not configured (`--upstream`) and names this host or a
        link-local service by its address (or `localhost`): the client chooses it, and the
        node would fetch `https://<ns>/v2/...` from there. With `client_registries` off,
        refuse every `?ns=` that is not configured. Names that merely resolve to such
        an address are caught when the node connects (`check_named_registry`).

        Raises:
            InvalidNamespace: the message says why.
        """
        if not self.named_by_client(namespace):
            return
        assert namespace is not None
        if not self.config.client_registries:
            raise InvalidNamespace(
                f"ns {namespace[:100]!r}: this node fetches only from its default upstream, "
                "docker.io and the registries --upstream maps (--no-client-registries)"
            )
        host = registry_host(namespace)
        kind = (
            "loopback"
            if host.lower() == "localhost"
            else internal_address_kind(host, this_host=True)
        )
        if kind == "unreadable":
            # The resolver also reads 127.1, 0 and 2130706433 as IPv4 addresses (inet_aton).
            with contextlib.suppress(OSError):
                resolved = socket.inet_ntoa(socket.inet_aton(host))
                kind = internal_address_kind(resolved, this_host=True)
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

    def named_by_client(self, namespace: str | None) -> bool:
        """Is `namespace` a registry only a client's `?ns=` names (a namespace, not the
        default upstream's None; no --upstream maps it; not Docker Hub)? Such a registry must
        be outside this host and its link (`check_named_registry`); a configured one may be
        anywhere. (A `?ns=` naming the default upstream's host is such a namespace too: map
        it with --upstream to reach a registry on this host by name.)"""
        return (
            namespace is not None
            and namespace not in self.config.mapping
            and namespace != DOCKER_HUB
        )

    def configured(self, base: str) -> bool:
        """Is `base` (a base URL) the default upstream, an --upstream's, or Docker Hub's?
        Any other is one a client's `?ns=` named once (a private blob's recorded origin)."""
        urls = {self.config.default, DOCKER_HUB_URL, *self.config.mapping.values()}
        return base.rstrip("/") in {url.rstrip("/") for url in urls}

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
        base = self.base_url(namespace)
        named = self.named_by_client(namespace)
        async with self.open_at(method, base, path, headers, named_by_client=named) as response:
            yield response

    @contextlib.asynccontextmanager
    async def open_at(
        self,
        method: str,
        base: str,
        path: str,
        headers: Mapping[str, str],
        *,
        named_by_client: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Like `open`, at the registry whose base URL is `base` (one recorded by the node,
        or, `named_by_client`, one a client's `?ns=` named: `open`). Redirects are followed,
        at most MAX_REDIRECTS, and only to where `check_redirect_target` allows.

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
        if named_by_client:
            # Half the pool for the registries clients name, whatever they do: 200 requests
            # at one that trickled held every connection, and every registry's manifests
            # failed (a helper's probe, 2026-12-04).
            if self.named_requests >= NAMED_CONNECTIONS:
                raise RegistriesBusy(
                    base, f"{NAMED_CONNECTIONS} requests to registries clients name are open"
                )
            self.named_requests += 1
        try:
            response = await self._send(base, request, named_by_client)
            try:
                yield response
            finally:
                await response.aclose()
        finally:
            if named_by_client:
                self.named_requests -= 1

    async def _send(self, base: str, request: httpx.Request, named: bool) -> httpx.Response:
        """Send `request` and follow its redirects; the last answer, its body not read.

        httpx builds each next request (`next_request`): without the Authorization header when
        the redirect leaves the origin (as the OCI spec requires), a GET after a 303.
        """
        start: RedirectStart | None = None
        for _ in range(MAX_REDIRECTS + 1):
            url = request.url
            port = url.port or (443 if url.scheme == "https" else 80)
            if start is None and named:
                timeout = self.config.connect_timeout
                await check_named_registry(base, url.host, port, timeout=timeout)
            elif start is not None:
                if url.scheme not in ("http", "https"):
                    raise UpstreamError(base, f"redirected to a {url.scheme[:20]!r} URL: refused")
                timeout = self.config.connect_timeout
                await check_redirect_target(base, start, url.host, port, timeout=timeout)
            # Connected and answered within the two time-outs, whatever comes before the head:
            # httpx skips `100 Continue` answers and each restarted its read time-out, so a
            # registry sending them without end held the request open as long as it liked
            # (a helper's probe, 2026-12-07).
            head_deadline = self.config.connect_timeout + self.config.stall_timeout
            try:
                with trio.fail_after(head_deadline):
                    response = await self._client.send(request, stream=True)
            except trio.TooSlowError:
                raise UpstreamError(base, f"no answer in {head_deadline:.0f}s") from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if start is None and named:
                    # httpx resolves the name again: DNS that answered the check otherwise
                    # may have sent it to a loopback port, and the error told an open port
                    # (its TLS handshake failed) from a closed one. One answer for both.
                    raise UpstreamError(base, "cannot connect or no TLS handshake") from exc
                raise UpstreamError(base, _describe(exc)) from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(base, _describe(exc)) from exc
            try:
                # httpx connects by resolving the name again: what it reached is checked too
                # (before the body is read; the request itself has gone to it by then).
                address = _server_address(response)
                if start is None:
                    if named and address is not None:
                        # DNS that answered otherwise to the check (the request went out).
                        check_named_address(base, url.host, port, address)
                    start = RedirectStart.reached_at(url.host, address, named_by_client=named)
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

    async def refusal(self, response: httpx.Response) -> UpstreamRefusal:
        """A 4xx answer to a GET as the client gets it: its status, the headers it needs
        (FORWARDED_ERROR_HEADERS) and its body, at most ERROR_BODY_LIMIT bytes.

        Raises:
            UpstreamError: the connection failed, or the body is larger.
        """
        body = await self.read_body(response, ERROR_BODY_LIMIT)
        headers = pick_headers(response.headers, FORWARDED_ERROR_HEADERS)
        return UpstreamRefusal(response.status_code, headers, body)

    def hold(self, budget: BodyBudget, namespace: str | None) -> BodyHold:
        """A hold on `budget` (`manifest_bodies`, `list_bodies`) for a body from the registry
        of `namespace`, counted in the named registries' share when a client named it."""
        return BodyHold(budget, self.named_by_client(namespace))

    async def read_body(
        self, response: httpx.Response, limit: int, hold: BodyHold | None = None
    ) -> bytes:
        """Read a body of at most `limit` bytes, counted in `hold` as it arrives (the caller
        releases it when done with the body). Without a hold, at most UNHELD_BODY_LIMIT
        (an error document, a token): 200 connections of those are 12.5 MiB.

        Raises:
            UpstreamError: the connection failed, or the body is larger than `limit`.
            BudgetSpent: the hold's budget cannot take the body's bytes (try again later).
        """
        if hold is None and limit > UNHELD_BODY_LIMIT:
            raise ValueError(f"a body of up to {limit} bytes is read only with a hold")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # Said up front: refused before a byte is read (the same refusal as below).
            raise UpstreamError(str(response.url.host), f"body over {limit} bytes")
        start = hold.size if hold is not None else 0
        if hold is not None and declared.isdigit():
            # The declared size (at most `limit`) is held before a byte is read: growing as
            # bytes came, concurrent reads each took part of the budget and then all failed.
            # First come, first served; the memory comes only with the bytes.
            hold.grow(int(declared))
        chunks: list[bytes] = []
        total = 0
        # A deadline for the whole body: the stall time-out alone let a registry that sent a
        # byte every 20 s hold its connection and its budget for as long as it liked, after
        # its client had gone (a helper's probe, 2026-12-04).
        with trio.move_on_after(BODY_DEADLINE) as deadline:
            try:
                async for chunk in response.aiter_raw():
                    total += len(chunk)
                    if total > limit:
                        raise UpstreamError(str(response.url.host), f"body over {limit} bytes")
                    if hold is not None and start + total > hold.size:
                        hold.grow(start + total - hold.size)  # no size declared, or a lie
                    chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise UpstreamError(str(response.url.host), _describe(exc)) from exc
        if deadline.cancelled_caught:
            raise UpstreamError(
                str(response.url.host), f"sent {total} bytes in {BODY_DEADLINE:g} s: too slow"
            )
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
