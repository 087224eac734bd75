"""A scripted upstream registry for unit tests of the front: serves given blobs and manifests,
counts requests, and can refuse without credentials, lie about content or sizes, ignore Range
or break off mid-blob.

Built on our own h11 server module so it speaks real HTTP over loopback; integration tests use
the real docker-registry instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import trio

from peer.config import Address, NodeConfig
from peer.front.http_server import HttpConnection, Request, serve_connection

_BLOB = re.compile(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_TAGS = re.compile(r"/v2/(.+)/tags/list")
_MANIFEST = re.compile(r"/v2/(.+)/manifests/(.+)")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def jwt(claims: object) -> str:
    """A bearer token in the JWT form (header.claims.signature), its signature not a real
    one (the fake registry compares tokens, it verifies nothing)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256'})}.{part(claims)}.c2lnbmF0dXJl"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)  # tag or digest -> body
    token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"
    realm: str = "http://auth.example/token"  # where the 401 says tokens come from
    lie_about: set[str] = field(default_factory=set)  # serve wrong bytes for these digests
    cut_after: int | None = None  # break the connection after this many body bytes
    pace: float = 0.0  # seconds to sleep between 64 KiB chunks of a blob
    ignore_range: bool = False  # answer every blob GET with 200 and the whole blob
    ranges_honoured: int | None = None  # when set, Range requests after that many are ignored
    # Zeros sent past the end a Range asked for (the Content-Range counts them in).
    range_extra: int = 0
    # When set, a Range is answered from this many bytes past the asked start (a lying 206).
    range_shift: int = 0
    range_delay: dict[str, float] = field(default_factory=dict)  # Range header -> wait first
    # Range header -> seconds between 64 KiB chunks of its answer, in place of `pace`.
    range_pace: dict[str, float] = field(default_factory=dict)
    range_sent: dict[str, int] = field(default_factory=dict)  # Range header -> body bytes sent
    # Range header -> `range_sent` as it was when that Range was asked.
    range_sent_when_asked: dict[str, dict[str, int]] = field(default_factory=dict)
    busy_ranges: int = 0  # answer this many Range requests with 503 first
    busy_gets: int = 0  # answer this many blob GETs (any, after `gate`) with 503 first
    refuse_ranges_from: int | None = None  # answer a Range from this byte on with 401
    # Added to the blob's size in the Content-Range of every other Range answer (a liar).
    range_total_extra: int = 0
    ranges_answered: int = 0
    # Content-Length to claim for these digests; the body is then cut to it, or breaks off
    # after the real bytes when the claim is larger.
    declared_size: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    gate: trio.Event | None = None  # when set, blob answers wait for it (a slow registry)
    # When set, blob answers carry a Date this many seconds off the local clock.
    clock_offset: float | None = None
    blob_gets_open: int = 0  # blob answers being sent now
    most_blob_gets_open: int = 0  # the most at any moment
    port: int = 0
    # Serve a manifest with the mediaType its body names (an index as an index); off, every
    # manifest goes out as an OCI image manifest (an index in disguise).
    typed_by_body: bool = False
    # Path fragment -> (status, headers, body) answered instead (a rate limit, a proxy's page).
    refusals: dict[str, tuple[int, list[tuple[str, str]], bytes]] = field(default_factory=dict)

    def add_blob(self, data: bytes, algorithm: str = "sha256") -> str:
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        self.blobs[digest] = data
        return digest

    def add_manifest(self, tag: str, body: bytes) -> str:
        digest = digest_of(body)
        self.manifests[tag] = body
        self.manifests[digest] = body
        return digest

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and path_part in p)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, self._handle, idle_timeout=30, send_timeout=30)

        task_status.started()
        await trio.serve_listeners(handler, listeners)

    async def _handle(self, conn: HttpConnection, request: Request) -> None:
        path = request.target.decode()
        self.requests.append((request.method, path, request.headers.get("range")))
        if (
            self.token is not None
            and request.headers.get("authorization") != f"Bearer {self.token}"
        ):
            await conn.respond(
                401,
                [
                    ("www-authenticate", f'Bearer realm="{self.realm}",service="fake"'),
                    ("content-type", "application/json"),
                ],
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
            return
        for fragment, (status, headers, body) in self.refusals.items():
            if fragment in path:
                await conn.respond(status, headers, body)
                return
        if m := _BLOB.fullmatch(path):
            await self._blob(conn, request, m.group(2))
        elif m := _TAGS.fullmatch(path.partition("?")[0]):
            await self._tags(conn, m.group(1), path.partition("?")[2])
        elif (m := _MANIFEST.fullmatch(path)) and m.group(2) in self.manifests:
            body = self.manifests[m.group(2)]
            kind = _media_type(body) if self.typed_by_body else MANIFEST_TYPE
            headers = [("content-type", kind), ("docker-content-digest", digest_of(body))]
            if request.method == "HEAD":
                await conn.start_response(200, [*headers, ("content-length", str(len(body)))])
                await conn.end_response()
            else:
                await conn.respond(200, headers, body)
        else:
            await conn.respond(404, [("content-type", "application/json")], b'{"errors":[]}')

    async def _tags(self, conn: HttpConnection, name: str, query: str) -> None:
        """docker-registry's pagination: tags in order, after `last`, `n` of them, with a
        Link to the next page when there is one."""
        params = urllib.parse.parse_qs(query)
        tags = sorted(t for t in self.manifests if ":" not in t)
        last = params.get("last", [""])[0]
        tags = [t for t in tags if t > last]
        headers = [("content-type", "application/json")]
        if "n" in params:
            n = int(params["n"][0])
            if len(tags) > n:
                tags = tags[:n]
                nxt = urllib.parse.urlencode({"n": n, "last": tags[-1]})
                headers.append(("link", f'<{self.url}/v2/{name}/tags/list?{nxt}>; rel="next"'))
        await conn.respond(200, headers, json.dumps({"name": name, "tags": tags}).encode())

    async def _blob(self, conn: HttpConnection, request: Request, digest: str) -> None:
        self.blob_gets_open += 1
        self.most_blob_gets_open = max(self.most_blob_gets_open, self.blob_gets_open)
        try:
            await self._blob_answer(conn, request, digest)
        finally:
            self.blob_gets_open -= 1

    async def _blob_answer(self, conn: HttpConnection, request: Request, digest: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.busy_gets > 0:
            self.busy_gets -= 1
            await conn.respond(503, [("content-type", "application/json")], b'{"errors":[]}')
            return
        data = self.blobs.get(digest)
        if data is None:
            await conn.respond(404, [], b"")
            return
        if digest in self.lie_about:
            data = bytes(len(data))
        start, end = 0, len(data)
        status = 200
        headers = [("content-type", "application/octet-stream"), ("docker-content-digest", digest)]
        if self.clock_offset is not None:
            headers.append(("date", formatdate(time.time() + self.clock_offset, usegmt=True)))
        range_header = request.headers.get("range")
        if range_header:
            self.range_sent_when_asked[range_header] = dict(self.range_sent)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        ignore = self.ignore_range
        if m and self.ranges_honoured is not None:
            ignore = ignore or self.ranges_honoured <= 0
            self.ranges_honoured -= 1
        if m and self.refuse_ranges_from is not None and int(m.group(1)) >= self.refuse_ranges_from:
            await conn.respond(401, [("content-type", "application/json")], b'{"errors":[]}')
            return
        if m and self.busy_ranges > 0:
            self.busy_ranges -= 1
            await conn.respond(503, [("content-type", "application/json")], b'{"errors":[]}')
            return
        if m and not ignore:
            await trio.sleep(self.range_delay.get(range_header or "", 0.0))
            start = int(m.group(1)) + self.range_shift
            if m.group(2):
                asked_end = min(end, int(m.group(2)) + 1)
                end = min(end, asked_end + self.range_extra)
                data = data[:asked_end] + bytes(end - asked_end) + data[end:]
            status = 206
            total = len(data) + self.range_total_extra * (self.ranges_answered % 2)
            self.ranges_answered += 1
            headers.append(("content-range", f"bytes {start}-{end - 1}/{total}"))
        length = self.declared_size.get(digest, end - start)
        end = min(end, start + length)
        headers.append(("content-length", str(length)))
        await conn.start_response(status, headers)
        if request.method == "HEAD":
            await conn.end_response()
            return
        sent = 0
        pace = self.range_pace.get(range_header or "", self.pace)
        for pos in range(start, end, 65536):
            chunk = data[pos : min(pos + 65536, end)]
            if self.cut_after is not None and sent + len(chunk) > self.cut_after:
                await conn.send_data(chunk[: self.cut_after - sent])
                await conn.stream.aclose()
                return
            await conn.send_data(chunk)
            sent += len(chunk)
            if range_header:
                self.range_sent[range_header] = sent
            if pace:
                await trio.sleep(pace)
        if sent < length:  # claimed more than there is: break off
            await conn.stream.aclose()
            return
        await conn.end_response()


def _media_type(body: bytes) -> str:
    """The mediaType a manifest body names (an index, say); the OCI manifest's by default."""
    try:
        said = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        return MANIFEST_TYPE
    return said if isinstance(said, str) else MANIFEST_TYPE


def node_config(
    registry: FakeRegistry, data_dir: Path, *, name: str | None = None, **settings: Any
) -> NodeConfig:
    """A node on loopback whose default upstream (and `?ns=NAME`, by default
    `127.0.0.1:<port>`) is `registry`."""
    return NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=data_dir,
        upstreams={name or f"127.0.0.1:{registry.port}": registry.url},
        default_upstream=registry.url,
        **settings,
    )
