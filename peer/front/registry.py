"""The registry HTTP front: the OCI distribution pull API that containerd, skopeo and podman use.

GET /v2/ ; HEAD|GET /v2/<name>/manifests/<ref> ; HEAD|GET /v2/<name>/blobs/<digest> (Range);
GET /v2/<name>/tags/list and /v2/<name>/referrers/<digest> (discovery.py); plus /healthz.
Anything else that writes is 405 UNSUPPORTED. The admin API (status, metrics, cache, preheat)
is on its own listener: admin.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from peer.access.auth_gate import credentials_key
from peer.access.policy import AccessPolicy, CachedElsewhere
from peer.body_parser import ParserBusy, ParserFailed
from peer.fetch.coordinator import FetchCoordinator
from peer.fetch.download import BlobSource, Download
from peer.fetch.manifest_reader import ManifestReader
from peer.fetch.manifests import fetch_manifest
from peer.fetch.prefetch import Prefetcher
from peer.front.discovery import serve_referrers, serve_tags
from peer.front.http_server import ClientGone, HttpConnection, Request
from peer.front.oci_errors import (
    OciError,
    digest_invalid,
    in_spec_form,
    unsupported_route,
    upstream_unavailable,
)
from peer.front.ranges import ByteRange, RangeNotSatisfiable, parse_range
from peer.front.routes import (
    AdminRoute,
    ApiRoot,
    BadRoute,
    BlobRoute,
    InvalidNamespace,
    ManifestRoute,
    NotFound,
    ReferrersRoute,
    TagsRoute,
    parse_target,
)
from peer.front.store_errors import store_failure
from peer.upstream.body_budget import BudgetSpent
from peer.upstream.client import Upstreams
from peer.upstream.errors import RegistriesBusy, UpstreamError, UpstreamRefusal
from peer.upstream.headers import (
    FORWARDED_ERROR_HEADERS,
    FORWARDED_REQUEST_HEADERS,
    UnforwardableHeader,
    check_forwardable,
    pick_headers,
)
from peer.upstream.node_auth import NodeAuth
from pieces.digest import InvalidDigest, digest_hex, is_digest
from pieces.manifest_facts import ManifestFacts
from pieces.partial import BlobFailed, PartialBlob, StoreError
from pieces.store import Store

log = logging.getLogger("pollen.front")

# A stored manifest the node could not read now (busy, or its worker failed): served unread.
UNREAD = ManifestFacts("not read", None, (), False, (), 0)
# Routes asked of the upstream with the client's headers (and a lent login, where one is).
UpstreamRoute = ApiRoot | BlobRoute | ManifestRoute | TagsRoute | ReferrersRoute

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
MANIFEST_ANSWER_HEADERS = ("content-type", "docker-content-digest", "content-length", "etag")


@dataclass
class ServedCounters:
    """What the front gave its clients: blob bytes from the store vs. while downloading."""

    blob_bytes_from_cache: int = 0
    blob_bytes_while_downloading: int = 0
    blob_requests_from_cache: int = 0
    blob_requests_while_downloading: int = 0
    manifests_from_cache: int = 0
    manifests_from_upstream: int = 0


class RegistryFront:
    """Routes one request at a time; shared by all connections of the node."""

    def __init__(
        self,
        store: Store,
        upstreams: Upstreams,
        downloads: FetchCoordinator,
        access: AccessPolicy,
        reader: ManifestReader,
        prefetch: Prefetcher | None = None,
        node_auth: NodeAuth | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.upstreams = upstreams
        self.downloads = downloads
        self.access = access
        self.prefetch = prefetch  # None: --no-prefetch
        self.node_auth = node_auth  # the node's logins, lent where --auth-for-clients says
        self.served = ServedCounters()

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        """Answer one request. Every failure is an error answer on this connection (or, once
        the answer has started, the end of it): nothing a request does reaches the node.

        Raises:
            ClientGone: the client left, or the answer broke off mid-body (cut the connection).
        """
        try:
            try:
                target = parse_target(request.target)
                route = target.route
                self.upstreams.check_namespace(target.namespace)
                if isinstance(route, UpstreamRoute):
                    # Checked before any upstream request or shared download starts.
                    check_forwardable(pick_headers(request.headers, FORWARDED_REQUEST_HEADERS))
            except InvalidNamespace as exc:
                raise OciError(400, "NAME_INVALID", str(exc)) from exc
            except UnforwardableHeader as exc:
                raise OciError(400, "UNSUPPORTED", str(exc)) from exc
            if isinstance(route, AdminRoute) and route.which != "healthz":
                # Only the health probe is on the registry port: every client reaches it.
                raise _on_admin_listener(request)
            if request.method not in ("GET", "HEAD"):
                raise OciError(
                    405,
                    "UNSUPPORTED",
                    f"{request.method} is not supported: this node is a read-only pull mirror "
                    "(push and delete at the registry itself)",
                    headers=(("connection", "close"), ("allow", "GET, HEAD")),
                )
            if isinstance(route, BadRoute):
                raise OciError(route.status, route.code, route.message)
            if isinstance(route, UpstreamRoute):
                request = await self._with_lent_login(request, target.namespace, route)
            if isinstance(route, ApiRoot):
                await self._api_root(conn, request, target.namespace)
            elif isinstance(route, BlobRoute):
                await self._blob(conn, request, route, target.namespace)
            elif isinstance(route, ManifestRoute):
                await self._manifest(conn, request, route, target.namespace)
            elif isinstance(route, TagsRoute | ReferrersRoute):
                await self._discovery(conn, request, route, target.namespace)
            elif isinstance(route, AdminRoute):
                await self._healthz(conn, request)
            else:
                assert isinstance(route, NotFound)
                raise unsupported_route(route.path)
        except OciError as exc:
            await self._send_error(conn, request, exc)
        except (BudgetSpent, ParserBusy, RegistriesBusy) as exc:  # RegistriesBusy: before
            log.warning("too busy for %s: %s", _describe_target(request), exc)
            error = OciError(
                503,
                "UNAVAILABLE",
                f"the node is as busy with registries as it may be: {exc}; try again",
                headers=(("retry-after", "1"),),
            )
            await self._send_error(conn, request, error)
        except UpstreamError as exc:
            log.warning("upstream failure for %s: %s", _describe_target(request), exc)
            await self._send_error(conn, request, upstream_unavailable(exc.upstream, exc.reason))
        except (StoreError, OSError) as exc:
            log.error("store failure for %s: %s", _describe_target(request), exc)
            await self._send_error(conn, request, store_failure(exc))
        except ParserFailed as exc:
            log.error("parsing failed for %s: %s", _describe_target(request), exc)
            error = OciError(503, "UNAVAILABLE", f"the node could not read the manifest: {exc}")
            await self._send_error(conn, request, error)
        except ClientGone:
            raise
        except Exception:
            # A bug: it stays in this request. The traceback goes to the log, not to the client.
            log.exception("internal error answering %s", _describe_target(request))
            error = OciError(500, "UNKNOWN", "internal error in pollen (the node's log has it)")
            await self._send_error(conn, request, error)

    async def _with_lent_login(
        self, request: Request, namespace: str | None, route: UpstreamRoute
    ) -> Request:
        """A request without credentials, to a registry the operator lends the node's login
        for (--auth-for-clients): the same request with that login. What it fetches is marked
        private like any credentialed fetch.

        A registry or token service that fails leaves the request as it came (logged).
        """
        node_auth = self.node_auth
        if (
            node_auth is None
            or "authorization" in request.headers
            or not node_auth.lends_to_clients(namespace)
        ):
            return request
        repository = None if isinstance(route, ApiRoot) else route.name
        try:
            value = await node_auth.authorization(namespace, repository)
        except UpstreamError as exc:
            # Asked as it came: what is cached still serves (after its access check), and
            # what is not gets the registry's own answer.
            log.warning("lending the node's login failed, asking without it: %s", exc)
            return request
        if value is None:
            return request
        return dataclasses.replace(request, headers={**request.headers, "authorization": value})

    async def _discovery(
        self,
        conn: HttpConnection,
        request: Request,
        route: TagsRoute | ReferrersRoute,
        namespace: str | None,
    ) -> None:
        """Tag lists and referrers: asked of the upstream as the client (discovery.py)."""
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        kind = "tags" if isinstance(route, TagsRoute) else "referrers"

        async def answer(status: int, out: list[tuple[str, str]], body: bytes) -> None:
            await _answer(conn, request, status, [*out, API_VERSION], body)

        async def refuse(refusal: UpstreamRefusal) -> None:
            await _forward_refusal(conn, request, refusal, kind)

        if isinstance(route, TagsRoute):
            await serve_tags(self.upstreams, route, namespace, headers, answer, refuse)
        else:
            _valid_digest(route.digest)
            # Its memory is the lists' budget's, its parse the worker's. (Four slots for all
            # registries bounded it before: four requests at a registry that trickled held
            # every client's referrers, a helper's probe, 2026-12-04.)
            parser = self.reader.parser
            await serve_referrers(self.upstreams, parser, route, namespace, headers, answer, refuse)

    async def _send_error(self, conn: HttpConnection, request: Request, exc: OciError) -> None:
        if conn.response_started:
            # Mid-body: the only honest signal left is to cut the connection.
            raise ClientGone(f"aborted mid-response: {exc.message}")
        headers = [("content-type", "application/json"), API_VERSION, *exc.headers]
        await _answer(conn, request, exc.status, headers, exc.body())

    async def _api_root(
        self, conn: HttpConnection, request: Request, namespace: str | None
    ) -> None:
        """The version check. It is asked of the upstream, because clients such as skopeo learn
        from its 401 challenge whether and how to authenticate before they send credentials."""
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        try:
            async with self.upstreams.open("GET", namespace, "/v2/", headers) as resp:
                if resp.status_code in (401, 403):
                    refusal = UpstreamRefusal(resp.status_code, _error_headers(resp.headers), b"")
                    await _forward_refusal(conn, request, refusal, None)
                    return
        except UpstreamError as exc:
            # Cached content can still be served: say the API is here, but log why the
            # upstream did not answer (requests that need it will get a 502 naming it).
            log.warning("version check: upstream unreachable: %s", exc)
        await _answer(
            conn, request, 200, [("content-type", "application/json"), API_VERSION], b"{}"
        )

    # ---- blobs ---------------------------------------------------------------------------

    async def _blob(
        self, conn: HttpConnection, request: Request, route: BlobRoute, namespace: str | None
    ) -> None:
        digest = _valid_digest(route.digest)
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        auth_key = credentials_key(headers)
        cached_elsewhere = False
        while True:
            if not cached_elsewhere and self.store.has_blob(digest):
                refusal = await self.access.refusal(namespace, route.name, "blobs", digest, headers)
                if isinstance(refusal, CachedElsewhere):
                    # Cached from other registries than the one this client names: fetched
                    # again from its own, whose verified bytes prove the client's access.
                    cached_elsewhere = True
                    continue
                if refusal is not None:
                    await _forward_refusal(conn, request, refusal, "blobs")
                    return
                if await self._serve_complete(conn, request, digest):
                    return
                continue  # evicted between the check and the open: fetch it again
            download = self.downloads.active.get(digest)
            if request.method == "HEAD" and download is None:
                await self._forward_head(conn, request, namespace, route.name, "blobs", digest)
                return
            source = BlobSource(digest, namespace, route.name, headers, auth_key)
            download = await self.downloads.join(source, conn.download_starter)
            with download.serving():
                await download.ready.wait()
                ours = download.started_for(source, self.upstreams.base_url)
                if not ours and (download.refusal is not None or download.error is not None):
                    # Another registry's answer (or another client's), not this client's: a
                    # registry a client names could refuse every anonymous client of a digest
                    # it holds up, with a login realm of its choosing (until 2026-12-04). This
                    # client's own try, once that download has ended.
                    await download.done.wait()
                    continue
                if download.refusal is not None:
                    await _forward_refusal(conn, request, download.refusal, "blobs")
                    return
                if download.error is not None:  # failed before this client got a byte
                    raise download.error
                if download.partial is None:
                    continue  # finished between our checks: serve it from the store
                if not ours:
                    # Someone else's download: the same check as on disk.
                    refusal = await self.access.refusal(
                        namespace, route.name, "blobs", digest, headers
                    )
                    if isinstance(refusal, CachedElsewhere):
                        # From other registries than this client's: its own must show the
                        # bytes (a download per digest at a time: once that one is done).
                        # Forwarded, the miss failed a client whose registry has the blob.
                        cached_elsewhere = True
                        await download.done.wait()
                        continue
                    if refusal is not None:
                        await _forward_refusal(conn, request, refusal, "blobs")
                        return
                if request.method == "GET":
                    # Past every check: a prefetch's flows kept back for this client open.
                    download.client_reads()
                await self._serve_partial(conn, request, download, download.partial)
                return

    async def _serve_complete(self, conn: HttpConnection, request: Request, digest: str) -> bool:
        """Serve a stored blob with sendfile; False when it vanished (evicted) before opening."""
        try:
            fd = os.open(self.store.complete_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            with self.store.reading(digest):
                size = os.fstat(fd).st_size
                byte_range, status, headers = _blob_answer(request, digest, size)
                await conn.start_response(status, headers)
                if request.method == "GET":
                    self.served.blob_requests_from_cache += 1
                    await conn.send_file(fd, byte_range.start, byte_range.length)
                    self.served.blob_bytes_from_cache += byte_range.length
                await conn.end_response()
        finally:
            os.close(fd)
        return True

    async def _serve_partial(
        self, conn: HttpConnection, request: Request, download: Download, partial: PartialBlob
    ) -> None:
        """Stream a blob while it downloads: each run of bytes goes out as soon as it is written.

        A full GET gets every byte as it lands, but its last byte only once the sha256 has been
        checked: a wrong blob reaches it as a cut stream. A part of the blob (a Range request)
        cannot be cut that way, since its last byte is not the blob's: it waits for the check
        before its first byte, and gets the download's error as a status if the check fails.
        """
        digest = download.digest
        byte_range, status, headers = _blob_answer(request, digest, partial.layout.size)
        with self.store.reading(digest):
            if status == 206 and request.method == "GET":
                verified = await _wait_verified(download, partial)
                if verified is not partial:
                    partial = verified
                    byte_range, status, headers = _blob_answer(request, digest, partial.layout.size)
            fd = _open_partial_data(partial)
            try:
                await conn.start_response(status, headers)
                if request.method == "GET":
                    self.served.blob_requests_while_downloading += 1
                    position = byte_range.start
                    while position < byte_range.end:
                        try:
                            available = await partial.wait_readable(position)
                        except BlobFailed as exc:
                            raise ClientGone(f"{digest}: {exc}") from exc
                        count = min(available, byte_range.end) - position
                        await conn.send_file(fd, position, count)
                        self.served.blob_bytes_while_downloading += count
                        position += count
                await conn.end_response()
            finally:
                os.close(fd)

    # ---- manifests -----------------------------------------------------------------------

    async def _manifest(
        self, conn: HttpConnection, request: Request, route: ManifestRoute, namespace: str | None
    ) -> None:
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        reference = route.reference
        by_digest = is_digest(reference)
        if by_digest:
            _valid_digest(reference)
            stored = self.store.manifest_type(reference) is not None
            refusal = None
            if stored:
                refusal = await self.access.refusal(
                    namespace, route.name, "manifests", reference, headers
                )
                if refusal is not None and not isinstance(refusal, CachedElsewhere):
                    await _forward_refusal(conn, request, refusal, "manifests")
                    return
            if stored and refusal is None:
                facts = await self._stored_facts(namespace, reference)
                opened = self.store.open_manifest(reference) if facts is not None else None
                if facts is not None and opened is not None:
                    self.served.manifests_from_cache += 1
                    media_type = opened[0]
                    await _answer_from_file(conn, request, reference, *opened)
                    if facts is not UNREAD:
                        self._prefetch_blobs(
                            request, namespace, route.name, headers, media_type, facts
                        )
                    return
                # Evicted meanwhile: fetched again, as a manifest never stored.
        # A tag can move: always resolved upstream. A HEAD stays a HEAD (registries such as
        # Docker Hub count GETs of manifests against rate limits, not HEADs).
        if request.method == "HEAD":
            await self._forward_head(conn, request, namespace, route.name, "manifests", reference)
            return
        fetched = await fetch_manifest(
            self.upstreams, self.store, self.reader, namespace, route.name, reference, headers
        )
        if isinstance(fetched, UpstreamRefusal):
            await _forward_refusal(conn, request, fetched, "manifests")
            return
        digest, facts = fetched.digest, fetched.facts
        # Answered from the file just stored (no await since: nothing evicted it), so that
        # the body is not held while the client reads; the bytes are the same.
        opened = self.store.open_manifest(digest)
        if opened is None:
            raise StoreError(f"manifest {digest} was not found in the store just after its put")
        del fetched
        self.served.manifests_from_upstream += 1
        media_type = opened[0]
        await _answer_from_file(conn, request, digest, *opened)
        self._prefetch_blobs(request, namespace, route.name, headers, media_type, facts)

    async def _stored_facts(self, namespace: str | None, digest: str) -> ManifestFacts | None:
        """The facts of a stored manifest, its sizes learned when they are due; the body is
        read (under a hold on the manifests' budget) only when they are not at hand. None:
        it was evicted meanwhile; UNREAD: the node could not read it now."""
        facts = self.reader.cached(digest)
        if facts is not None and not self.store.manifest_sizes_due(digest):
            return facts
        try:
            with self.upstreams.hold(self.upstreams.manifest_bodies, namespace) as hold:
                stored = self.store.get_manifest(digest)
                if stored is None:
                    return None
                hold.grow(len(stored[1]))
                return await self.reader.stored_facts(self.store, digest, stored[1])
        except (BudgetSpent, ParserBusy, ParserFailed) as exc:
            # Served all the same (from its file, no memory): its sizes only add checks, and
            # its blobs are not prefetched this time.
            log.warning("manifest %s served without reading it: %s", digest, exc)
            return UNREAD

    def _prefetch_blobs(
        self,
        request: Request,
        namespace: str | None,
        name: str,
        headers: dict[str, str],
        media_type: str,
        facts: ManifestFacts,
    ) -> None:
        """After a GET's answer: start the downloads of the blobs of an image manifest, as
        this client would ask for them (its registry, repository and credentials), so their
        access rules are the client's own. Never fails the request it follows."""
        if self.prefetch is None or request.method != "GET":
            return
        try:
            self.prefetch.offer(
                namespace, name, headers, credentials_key(headers), media_type, facts
            )
        except Exception:  # a bug in prefetch must not cut the connection it follows
            log.exception("prefetch after %s failed (a bug)", _describe_target(request))

    async def _forward_head(
        self,
        conn: HttpConnection,
        request: Request,
        namespace: str | None,
        name: str,
        kind: str,
        reference: str,
    ) -> None:
        """A HEAD asked of the upstream: a blob we do not hold (no download starts), or a
        manifest (a tag can move; answered with the upstream's headers, its digest too)."""
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        path = f"/v2/{name}/{kind}/{reference}"
        async with self.upstreams.open("HEAD", namespace, path, headers) as resp:
            if 400 <= resp.status_code < 500:
                refusal = UpstreamRefusal(resp.status_code, _error_headers(resp.headers), b"")
                await _forward_refusal(conn, request, refusal, kind)
                return
            if resp.status_code != 200:
                base = self.upstreams.base_url(namespace)
                what = kind.removesuffix("s")
                raise UpstreamError(base, f"answered {resp.status_code} for {what} {reference}")
            answer = pick_headers(resp.headers, MANIFEST_ANSWER_HEADERS)
            if kind == "blobs":
                answer["docker-content-digest"] = reference  # what the blob is named by
            await conn.start_response(200, [*answer.items(), API_VERSION])
            await conn.end_response()

    # ---- admin ---------------------------------------------------------------------------

    async def _healthz(self, conn: HttpConnection, request: Request) -> None:
        await _answer(conn, request, 200, [("content-type", "text/plain")], b"ok\n")


# ---- helpers ------------------------------------------------------------------------------


def _on_admin_listener(request: Request) -> OciError:
    path = request.target.decode("ascii", "replace").partition("?")[0][:200]
    return OciError(
        404,
        "UNSUPPORTED",
        f"{path} is served on the node's admin address (--admin), with its admin token",
    )


def _valid_digest(digest: str) -> str:
    try:
        digest_hex(digest)
    except InvalidDigest as exc:
        raise digest_invalid(digest, str(exc)) from exc
    return digest


def _blob_answer(
    request: Request, digest: str, size: int
) -> tuple[ByteRange, int, list[tuple[str, str]]]:
    """The range to send, the status and the headers of a blob answer."""
    headers = [
        ("content-type", "application/octet-stream"),
        ("docker-content-digest", digest),
        ("etag", f'"{digest}"'),
        ("accept-ranges", "bytes"),
        API_VERSION,
    ]
    try:
        byte_range = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        raise OciError(
            416,
            "RANGE_INVALID",
            f"range {exc} is outside the blob of {size} bytes",
            headers=(("content-range", f"bytes */{size}"),),
        ) from exc
    if byte_range is None:
        return ByteRange(0, size), 200, [*headers, ("content-length", str(size))]
    headers += [
        ("content-length", str(byte_range.length)),
        ("content-range", byte_range.content_range(size)),
    ]
    return byte_range, 206, headers


def _manifest_headers(media_type: str, digest: str) -> list[tuple[str, str]]:
    return [
        ("content-type", media_type),
        ("docker-content-digest", digest),
        ("etag", f'"{digest}"'),
        API_VERSION,
    ]


def _error_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return pick_headers(headers, FORWARDED_ERROR_HEADERS)


async def _forward_refusal(
    conn: HttpConnection, request: Request, refusal: UpstreamRefusal, kind: str | None
) -> None:
    """Pass an upstream 4xx on (a 401's WWW-Authenticate starts the token flow, a 429's
    Retry-After says when to come back), its body in the spec's error form: one that is not
    gets the code for its status and `kind` ("manifests", "blobs", "tags", "referrers")."""
    body = refusal.body
    headers = dict(refusal.headers)
    replaced = in_spec_form(refusal.status, body, kind) if body or request.method == "GET" else None
    if replaced is not None:
        body = replaced
        headers["content-type"] = "application/json"
    await _answer(conn, request, refusal.status, list(headers.items()), body)


async def _answer(
    conn: HttpConnection, request: Request, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    """A whole answer; for HEAD, the headers of the GET answer without its body."""
    if request.method == "HEAD":
        await conn.start_response(status, [*headers, ("content-length", str(len(body)))])
        await conn.end_response()
    else:
        await conn.respond(status, headers, body)


async def _answer_from_file(
    conn: HttpConnection, request: Request, digest: str, media_type: str, fd: int
) -> None:
    """A stored manifest's answer from its open file `fd` (closed here), sent kernel to
    kernel; for HEAD, the headers only."""
    try:
        size = os.fstat(fd).st_size
        headers = [*_manifest_headers(media_type, digest), ("content-length", str(size))]
        await conn.start_response(200, headers)
        if request.method != "HEAD":
            await conn.send_file(fd, 0, size)
        await conn.end_response()
    finally:
        os.close(fd)


async def _wait_verified(download: Download, partial: PartialBlob) -> PartialBlob:
    """Wait until the blob's sha256 has been checked; returns the partial that passed (the
    download's next one when it started over).

    Raises:
        Exception: the download's error when the blob failed (nothing has been sent yet, so
            the client gets it as a status).
    """
    while True:
        try:
            await partial.wait_verified()
            return partial
        except BlobFailed:
            if download.partial is not None and download.partial is not partial:
                partial = download.partial  # started over (a 200 to a Range request)
                continue
            if partial.error is None:
                raise
            raise partial.error from None


def _open_partial_data(partial: PartialBlob) -> int:
    """Open a partial's bytes; it may have just been completed (renamed) by the writer thread."""
    for path in (partial.data_path, partial.complete_path):
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
    raise BlobFailed(f"{partial.digest}: data file is gone ({partial.error or 'discarded'})")


def _describe_target(request: Request) -> str:
    # Never include headers: they may carry credentials.
    return f"{request.method} {request.target.decode('ascii', 'replace')[:300]}"
