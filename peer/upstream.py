"""The upstream registry client: which registry a request goes to, and the HTTP calls to it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"

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
        # follow_redirects: registries redirect blob GETs to object storage. httpx drops the
        # Authorization header when a redirect leaves the origin, as the OCI spec requires.
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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
        never one a client chose).

        Raises:
            UpstreamError: the upstream could not be reached or the connection failed.
        """
        try:
            check_forwardable(headers)
            request = self._client.build_request(method, base + path, headers=dict(headers))
        except UnforwardableHeader as exc:
            raise UpstreamError(base, str(exc)) from None
        except httpx.InvalidURL as exc:  # not an HTTPError: raised before anything is sent
            raise UpstreamError(base, f"not a URL we can fetch: {exc}") from None
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(base, _describe(exc)) from exc
        try:
            yield response
        finally:
            await response.aclose()

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


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def pick_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The subset of `headers` (case-insensitive) named in `names`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in names if name in lowered}
