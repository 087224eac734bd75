"""The node keeps no registry cookies: it held one cookie jar for every client and registry,
so a session cookie a registry gave in answer to one client's credentials went with every
later request to that registry, an anonymous client's access check included, and a registry
that takes its session cookie as credentials (as those behind session-issuing proxies do)
then served that client the private blob. A jar also grew without bound (a registry sending
many cookies per answer: every request head carried them all). A real node; the registry is
scripted."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.front.http_server import HttpConnection, Request
from peer.node import Node
from tests.peer.scripted_server import ScriptedServer, reply

TOKEN = "Bearer good"
SESSION = "session=s3cret"


async def test_a_session_cookie_one_client_got_never_serves_another(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = os.urandom(200_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cookies_seen: list[str | None] = []

    async def registry(conn: HttpConnection, request: Request) -> None:
        cookie = request.headers.get("cookie")
        cookies_seen.append(cookie)
        authorized = request.headers.get("authorization") == TOKEN
        if not authorized and SESSION not in (cookie or ""):
            headers = [("www-authenticate", 'Bearer realm="http://127.0.0.1:9/token"')]
            await reply(conn, request, 401, headers, b'{"errors":[]}')
            return
        # Many cookies per answer, the session cookie among them.
        headers = [("set-cookie", f"c{i}={'x' * 100}; Path=/") for i in range(50)]
        headers.append(("set-cookie", f"{SESSION}; Path=/; HttpOnly"))
        if request.target.decode() == "/v2/":
            await reply(conn, request, 200, headers, b"{}")
        elif re.fullmatch(r"/v2/team/secret/blobs/" + digest, request.target.decode()):
            headers += [("docker-content-digest", digest)]
            await reply(conn, request, 200, headers, data)
        else:
            await reply(conn, request, 404, headers, b'{"errors":[]}')

    server = ScriptedServer(answer=registry)
    await nursery.start(server.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0), data_dir=tmp_path / "store", default_upstream=server.url
    )
    port = await nursery.start(Node(config).run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        url = f"/v2/team/secret/blobs/{digest}"
        # The holder of the login: the version check (as docker and containerd begin), then
        # the blob, again and again (the jar grew with each answer).
        assert (await client.get("/v2/", headers={"authorization": TOKEN})).status_code == 200
        for _ in range(3):
            got = await client.get(url, headers={"authorization": TOKEN})
            assert got.status_code == 200 and got.content == data
        anonymous = await client.get(url)
        assert anonymous.status_code == 401, "an anonymous client got the private blob"
        assert anonymous.content != data
    assert cookies_seen and not any(cookies_seen), "the node sent a registry's cookies back"
