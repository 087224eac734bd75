"""The node's own logins: the auth file formats, and the registry's login flow (Basic, or a
Bearer token bought at the realm and kept until it expires)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from peer.front.http_server import HttpConnection, Request, serve_connection
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.credentials import BadAuthFile, Credentials, Login, load_auth_file
from peer.upstream.errors import UpstreamError
from peer.upstream.node_auth import MAX_TOKEN_TTL, NodeAuth, parse_challenge
from tests.peer.fake_registry import FakeRegistry

SECRET = "s3cret-pa55"


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_and_containers_formats_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64(f"hubuser:{SECRET}")},
                "registry.example.com:5000": {"auth": b64(f"alice:{SECRET}")},
                "ghcr.io/team": {"username": "bob", "password": SECRET},
                "ghcr.io/team/special": {"username": "carol", "password": SECRET},
            }
        },
    )
    creds = load_auth_file(path)
    assert creds.for_repository("docker.io", "library/nginx") == Login("hubuser", SECRET)
    assert creds.for_repository("registry.example.com:5000", "a/b") == Login("alice", SECRET)
    assert creds.for_repository("ghcr.io", "team/app") == Login("bob", SECRET)
    assert creds.for_repository("ghcr.io", "team/special/x") == Login("carol", SECRET)
    assert creds.for_repository("ghcr.io", "other/app") is None  # no key covers it
    assert creds.for_repository("quay.io", "team/app") is None
    assert SECRET not in repr(creds) and SECRET not in repr(creds.logins)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"auths": {"r.io": {"identitytoken": "x"}}}, "identity token"),
        ({"credsStore": "desktop", "auths": {}}, "credential helpers"),
        ({"auths": {"r.io": {"auth": "not base64!"}}}, "not base64"),
        ({"auths": {"r.io": {"auth": b64(SECRET)}}}, "no user name"),
        ({"auths": []}, '"auths" is not an object'),
        ([], "not a JSON object"),
    ],
)
def test_an_unusable_file_is_refused_without_showing_a_secret(
    tmp_path: Path, document: object, says: str
) -> None:
    with pytest.raises(BadAuthFile, match=says) as refused:
        load_auth_file(write(tmp_path, document))
    assert SECRET not in str(refused.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadAuthFile, match="cannot read"):
        load_auth_file(tmp_path / "none.json")


def test_challenges_are_read_as_registries_send_them() -> None:
    bearer = parse_challenge('Bearer realm="https://auth.io/token",service="registry.io"')
    assert (bearer.scheme, bearer.realm, bearer.service) == (
        "bearer",
        "https://auth.io/token",
        "registry.io",
    )
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"
    assert parse_challenge(None).scheme == "basic"


class TokenService:
    """A registry's token endpoint: a token for alice's right password, 401 otherwise."""

    def __init__(self) -> None:
        self.asked: list[dict[str, list[str]]] = []
        self.port = 0
        self.expires_in = "300"  # as JSON text: a registry may send any number

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self._handle, idle_timeout=10, send_timeout=10)

        task_status.started()
        await trio.serve_listeners(handler, listeners)

    async def _handle(self, conn: HttpConnection, request: Request) -> None:
        query = urllib.parse.parse_qs(request.target.decode().partition("?")[2])
        self.asked.append(query)
        if request.headers.get("authorization") != "Basic " + b64(f"alice:{SECRET}"):
            await conn.respond(401, [], b"")
            return
        body = b'{"token": "the-token", "expires_in": %s}' % self.expires_in.encode()
        await conn.respond(200, [("content-type", "application/json")], body)


@contextlib.asynccontextmanager
async def _setup(
    nursery: trio.Nursery, password: str
) -> AsyncIterator[tuple[NodeAuth, TokenService, FakeRegistry]]:
    tokens = TokenService()
    await nursery.start(tokens.serve)
    registry = FakeRegistry(token="the-token", realm=f"http://127.0.0.1:{tokens.port}/token")
    await nursery.start(registry.serve)
    host = f"127.0.0.1:{registry.port}"
    upstreams = Upstreams(UpstreamConfig({host: registry.url}, registry.url))
    creds = Credentials({host: Login("alice", password)})
    try:
        yield NodeAuth(upstreams, creds, frozenset({host})), tokens, registry
    finally:
        await upstreams.aclose()


async def test_a_bearer_token_is_bought_once_for_a_repository_and_reused(
    nursery: trio.Nursery,
) -> None:
    async with _setup(nursery, SECRET) as (auth, tokens, registry):
        host = f"127.0.0.1:{registry.port}"
        assert await auth.authorization(host, "team/app") == "Bearer the-token"
        assert await auth.authorization(host, "team/app") == "Bearer the-token"
        assert len(tokens.asked) == 1
        assert tokens.asked[0] == {"service": ["fake"], "scope": ["repository:team/app:pull"]}
        assert auth.lends_to_clients(host) and auth.lends_to_clients(None)
        assert not auth.lends_to_clients("other.io")
        assert await auth.authorization("other.io", "team/app") is None  # no login: nothing asked
        assert registry.count("GET", "/v2/") == 1


@pytest.mark.parametrize("expires_in", ["1" + "0" * 400, "Infinity", "NaN", "-5", "1e999"])
async def test_a_token_answers_expiry_of_any_number_is_taken_within_bounds(
    nursery: trio.Nursery, expires_in: str
) -> None:
    # A 400-digit expires_in raised OverflowError in float() (a 500 and a traceback for the
    # client; a helper's probe); an infinite one would have kept the token for ever.
    async with _setup(nursery, SECRET) as (auth, tokens, registry):
        tokens.expires_in = expires_in
        host = f"127.0.0.1:{registry.port}"
        assert await auth.authorization(host, "team/app") == "Bearer the-token"
        expiries = [until - time.monotonic() for _, until in auth._tokens.values()]
        assert len(expiries) == 1 and expiries[0] <= MAX_TOKEN_TTL


async def test_a_refused_login_is_an_error_that_names_no_secret(nursery: trio.Nursery) -> None:
    async with _setup(nursery, "wrong-password") as (auth, _tokens, registry):
        with pytest.raises(UpstreamError, match="refused the node's login") as refused:
            await auth.authorization(f"127.0.0.1:{registry.port}", "team/app")
    assert "wrong-password" not in str(refused.value)


async def test_a_realm_that_is_not_http_is_refused(nursery: trio.Nursery) -> None:
    async with _setup(nursery, SECRET) as (auth, _tokens, registry):
        registry.realm = "file:///etc/passwd"
        with pytest.raises(UpstreamError, match="not http"):
            await auth.authorization(f"127.0.0.1:{registry.port}", "team/app")


def test_docker_hubs_names_are_one_registry() -> None:
    upstreams = Upstreams(UpstreamConfig({}, "https://registry-1.docker.io"))
    auth = NodeAuth(upstreams, Credentials(), NodeAuth.lent_names(("index.docker.io",)))
    assert auth.lends_to_clients("docker.io") and auth.lends_to_clients("index.docker.io")
    assert auth.lends_to_clients(None)  # the default upstream is Docker Hub here
    assert auth.registry("registry-1.docker.io") == "docker.io"


class NoNames(trio.abc.HostnameResolver):
    """No name resolves; the names asked are kept (a request for one would have gone out)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | str | None, port: bytes | str | int | None, *args: object, **kw: object
    ) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        self.asked.append(host.decode() if isinstance(host, bytes) else str(host))
        raise trio.socket.gaierror(-2, "Name or service not known")

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError


async def test_docker_hubs_login_goes_only_where_docker_io_goes(nursery: trio.Nursery) -> None:
    """With --upstream docker.io=<mirror>, the docker.io login is the mirror's: `?ns=docker.io`
    goes there. `?ns=index.docker.io` (and registry-1.docker.io) took the same login, but no
    --upstream maps them: they go to Docker's own hosts, and any client could have the node
    send the mirror's login there (the Basic login to the realm those hosts name) where the
    operator lends docker.io's (--auth-for-clients docker.io)."""
    tokens = TokenService()
    await nursery.start(tokens.serve)
    mirror = FakeRegistry(token="the-token", realm=f"http://127.0.0.1:{tokens.port}/token")
    await nursery.start(mirror.serve)
    resolver = NoNames()
    trio.socket.set_custom_hostname_resolver(resolver)
    for default in (mirror.url, "https://registry-1.docker.io"):
        upstreams = Upstreams(UpstreamConfig({"docker.io": mirror.url}, default))
        auth = NodeAuth(
            upstreams,
            Credentials({"docker.io": Login("alice", SECRET)}),
            NodeAuth.lent_names(("docker.io",)),
        )
        try:
            assert await auth.authorization("docker.io", "library/nginx") == "Bearer the-token"
            assert auth.lends_to_clients("docker.io")
            aliases: list[str | None] = ["index.docker.io", "registry-1.docker.io"]
            if default != mirror.url:
                aliases.append(None)  # the default upstream: Docker's own host
            for alias in aliases:
                assert not auth.lends_to_clients(alias), alias
                assert await auth.authorization(alias, "library/nginx") is None, alias
        finally:
            await upstreams.aclose()
    assert resolver.asked == []  # no login went toward Docker's hosts
    assert len(tokens.asked) == 2  # the mirror's token service, once per node


async def test_a_lent_login_that_cannot_be_had_does_not_stop_the_node_serving(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The lending registry is down or answers nonsense to GET /v2/: the request goes on as
    it came (it used to be a 502 for everything, the cache included)."""
    from peer.node import Node
    from tests.peer.fake_registry import node_config

    registry = FakeRegistry()  # answers 404 to GET /v2/: no challenge to follow
    await nursery.start(registry.serve)
    host = f"127.0.0.1:{registry.port}"
    auth = write(tmp_path, {"auths": {host: {"username": "u", "password": SECRET}}})
    node = Node(node_config(registry, tmp_path / "store", auth_file=auth, auth_for_clients=(host,)))
    port = await nursery.start(node.run)
    digest = registry.add_blob(b"public layer" * 100)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        answer = await client.get(f"/v2/team/app/blobs/{digest}?ns={host}")
    assert answer.status_code == 200 and answer.content == b"public layer" * 100


def test_a_docker_io_login_that_requests_without_ns_go_without_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With --upstream docker.io=<mirror>, the docker.io login (`docker login`'s
    index.docker.io/v1/ entry) is the mirror's, and requests without ?ns= go to a default
    upstream of Docker Hub's own host with no login: anonymous pulls, rate-limited, without
    a word at start-up (a review's find)."""
    from peer.config import Address, NodeConfig
    from peer.node import Node

    docker_login = {"https://index.docker.io/v1/": {"auth": b64(f"alice:{SECRET}")}}
    mirror, docker_hub = "https://mirror.example", "https://registry-1.docker.io"

    def warned(auths: object, **settings: object) -> list[str]:
        caplog.clear()
        auth_file = write(tmp_path, {"auths": auths})
        config = NodeConfig(
            http=Address("127.0.0.1", 0), data_dir=tmp_path / "store", auth_file=auth_file
        )
        with caplog.at_level(logging.WARNING, logger="pollen.node"):
            Node(dataclasses.replace(config, **settings))  # type: ignore[arg-type]
        return [r.getMessage() for r in caplog.records if "docker.io login" in r.getMessage()]

    mapped = {"docker.io": mirror}
    (warning,) = warned(docker_login, upstreams=mapped, default_upstream=docker_hub)
    assert f"--default-upstream {mirror}" in warning and docker_hub in warning
    assert SECRET not in warning and "alice" not in warning
    assert not warned(docker_login, upstreams=mapped, default_upstream=mirror)
    assert not warned(docker_login, default_upstream=docker_hub)  # the login goes there
    assert not warned({"ghcr.io": {"auth": b64("bob:x")}}, upstreams=mapped)
