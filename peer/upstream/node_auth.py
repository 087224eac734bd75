"""The node logging in to a registry with its own credentials (`--auth-file`): for preheat
jobs, and for client requests that bring none where the operator lends them
(`--auth-for-clients REGISTRY`).

The registry says how (the distribution spec's token flow, as docker and containerd do it):
`GET /v2/` without credentials answers 401 with `WWW-Authenticate: Bearer realm=...,
service=...` (the login buys a token for `repository:<name>:pull` at the realm, kept until it
expires), or anything else (Basic, or 200 from a registry with anonymous reads: the login goes
as Basic). The realm must be http(s), and plain http only for a registry on plain http; the
login goes only to the registry it is for (where requests for that name go: `registry`), and
to the realm that registry names. Nothing here logs a secret.

Like a client's credentials, the Authorization a job or a lent login uses travels with the
requests for the blob: to its owner in the swarm (Want), to members (Warm), never stored.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass

from peer.upstream.client import DOCKER_HUB, DOCKER_HUB_URL, Upstreams
from peer.upstream.credentials import DOCKER_HUB_NAMES, Credentials, Login
from peer.upstream.errors import UpstreamError
from wire.names import is_authorization

log = logging.getLogger("pollen.credentials")

CHALLENGE_TTL = 300.0  # seconds a registry's answer to GET /v2/ is trusted
DEFAULT_TOKEN_TTL = 60.0  # the spec's default when a token answer names no expiry
# The longest a bought token is kept, whatever the answer says: a registry may send any JSON
# number (float() of a 400-digit one raised OverflowError; Infinity would keep it for ever).
MAX_TOKEN_TTL = 3600.0
TOKEN_MARGIN = 10.0  # a token is renewed this long before it expires
MAX_TOKENS = 1024
TOKEN_BODY_LIMIT = 64 * 1024
_PARAM = re.compile(r'(\w+)="([^"]*)"')
_DOCKER_HUB_URLS = frozenset(f"https://{name}" for name in DOCKER_HUB_NAMES)  # Docker's hosts


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "none", "basic" or "bearer"
    realm: str = ""
    service: str = ""


def parse_challenge(header: str | None) -> Challenge:
    """The scheme and parameters of a WWW-Authenticate header (missing: Basic, as registries
    that answer 401 without one expect)."""
    if not header:
        return Challenge("basic")
    scheme, _, params = header.strip().partition(" ")
    values = dict(_PARAM.findall(params))
    if scheme.lower() == "bearer":
        return Challenge("bearer", values.get("realm", ""), values.get("service", ""))
    return Challenge("basic")


class NodeAuth:
    def __init__(
        self, upstreams: Upstreams, credentials: Credentials, lent: frozenset[str] = frozenset()
    ) -> None:
        self._upstreams = upstreams
        self._challenges: dict[str, tuple[Challenge, float]] = {}
        self._tokens: dict[tuple[str, str | None], tuple[str, float]] = {}
        self.update(credentials, lent)

    def update(self, credentials: Credentials, lent: frozenset[str]) -> None:
        """New logins (a reload): tokens bought with the old ones are dropped."""
        self.credentials = credentials
        self._lent = lent
        self._tokens.clear()

    def registry(self, namespace: str | None) -> str:
        """The registry (host[:port]) whose login goes with a request for `namespace`: the one
        a `?ns=` names; the default upstream's for None. A name of Docker Hub's is docker.io
        only where it goes where docker.io goes: with an --upstream that maps docker.io to a
        mirror, docker.io's login is the mirror's, and index.docker.io, which no --upstream
        maps, still goes to Docker's own hosts (any client could have the node send the
        mirror's login there)."""
        if namespace is None:
            name = urllib.parse.urlsplit(self._upstreams.base_url(None)).netloc
        else:
            name = namespace
        if name in DOCKER_HUB_NAMES and self._goes_to(namespace) == self._goes_to(DOCKER_HUB):
            return DOCKER_HUB
        return name

    def _goes_to(self, namespace: str | None) -> str:
        """The registry (base URL) requests for `namespace` go to, Docker Hub's own hosts as
        one."""
        url = self._upstreams.base_url(namespace)
        return DOCKER_HUB_URL if url in _DOCKER_HUB_URLS else url

    def default_goes_without_login(self) -> str | None:
        """What to warn of when the default upstream is Docker Hub's own host while
        --upstream maps docker.io to a mirror and the auth file has a docker.io login: that
        login is the mirror's (`registry`), and requests without `?ns=` go to Docker Hub
        with no login, which nothing else would say (anonymous pulls: rate-limited, no
        private images). None otherwise."""
        default = self._upstreams.base_url(None)
        if (
            DOCKER_HUB not in self.credentials.registries()
            or default not in _DOCKER_HUB_URLS
            or self.registry(None) == DOCKER_HUB
        ):
            return None
        mirror = self._upstreams.base_url(DOCKER_HUB)
        return (
            f"--upstream docker.io={mirror}: the docker.io login of --auth-file goes to that "
            f"mirror only, and requests without ?ns= go to the default upstream, Docker Hub's "
            f"own {default}, with no login (anonymous pulls: rate-limited, no private images); "
            f"--default-upstream {mirror} sends them through the mirror with the login, and "
            "without the docker.io mapping the login goes to Docker Hub"
        )

    def lends_to_clients(self, namespace: str | None) -> bool:
        return self.registry(namespace) in self._lent

    @staticmethod
    def lent_names(registries: tuple[str, ...]) -> frozenset[str]:
        """--auth-for-clients names as logins are keyed (Docker Hub's aliases: docker.io)."""
        return frozenset(DOCKER_HUB if r in DOCKER_HUB_NAMES else r for r in registries)

    async def authorization(self, namespace: str | None, repository: str | None) -> str | None:
        """The Authorization header this node sends to the registry of `namespace` for
        `repository` (None: the API root), or None: no login for it, or none needed.

        Raises:
            UpstreamError: the registry or its token service could not be asked, or refused
                the login (the message says which; never the secret).
        """
        registry = self.registry(namespace)
        login = self.credentials.for_repository(registry, repository or "")
        if login is None:
            return None
        challenge = await self._challenge(namespace)
        if challenge.scheme in ("none", "basic"):
            # "none": /v2/ is open, but private repositories may still want the login
            # (registries with anonymous reads take Basic for the rest).
            return login.basic()
        key = (registry, repository)
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        base_url = self._upstreams.base_url(namespace)
        token, ttl = await self._buy_token(challenge, repository, login, registry, base_url)
        if len(self._tokens) >= MAX_TOKENS:
            self._tokens.clear()
        value = f"Bearer {token}"
        self._tokens[key] = (value, now + max(0.0, ttl - TOKEN_MARGIN))
        return value

    async def _challenge(self, namespace: str | None) -> Challenge:
        base = self._upstreams.base_url(namespace)
        cached = self._challenges.get(base)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._upstreams.open("GET", namespace, "/v2/", {}) as resp:
            if resp.status_code == 401:
                challenge = parse_challenge(resp.headers.get("www-authenticate"))
            elif 200 <= resp.status_code < 300:
                challenge = Challenge("none")
            else:
                raise UpstreamError(base, f"answered {resp.status_code} to GET /v2/")
        self._challenges[base] = (challenge, time.monotonic() + CHALLENGE_TTL)
        return challenge

    async def _buy_token(
        self,
        challenge: Challenge,
        repository: str | None,
        login: Login,
        registry: str,
        base_url: str,
    ) -> tuple[str, float]:
        realm = urllib.parse.urlsplit(challenge.realm)
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise UpstreamError(
                registry, f"names a token realm that is not http(s): {challenge.realm[:200]!r}"
            )
        if realm.scheme == "http" and base_url.startswith("https://"):
            # The login would leave in clear text although the registry itself is on TLS.
            raise UpstreamError(
                registry, f"names a plain-http token realm: {challenge.realm[:200]!r}"
            )
        query = {"service": challenge.service} if challenge.service else {}
        if repository:
            query["scope"] = f"repository:{repository}:pull"
        path = realm.path or "/"
        existing = f"{realm.query}&" if realm.query else ""
        path += "?" + existing + urllib.parse.urlencode(query)
        base = f"{realm.scheme}://{realm.netloc}"
        async with self._upstreams.open_at(
            "GET", base, path, {"authorization": login.basic()}
        ) as resp:
            if resp.status_code in (401, 403):
                raise UpstreamError(
                    base, f"refused the node's login for {registry} ({resp.status_code})"
                )
            if resp.status_code != 200:
                raise UpstreamError(base, f"answered {resp.status_code} for a token")
            body = await self._upstreams.read_body(resp, TOKEN_BODY_LIMIT)
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            ttl = answer.get("expires_in", DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError, RecursionError):
            raise UpstreamError(base, "sent a token answer that is not a JSON object") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError(base, "sent no token")
        if not is_authorization(f"Bearer {token}"):
            # It goes into the Authorization of every request for the repository, and to
            # the other nodes, which refuse what no header could carry.
            raise UpstreamError(base, "sent a token no Authorization header could carry")
        if not isinstance(ttl, int | float) or not ttl > 0:  # NaN is not > 0 either
            return token, DEFAULT_TOKEN_TTL
        return token, float(min(ttl, MAX_TOKEN_TTL))
