"""The admin API, on its own listener (`--admin`), for the node's operator only.

GET /healthz, GET /readyz and GET /metrics answer anyone who reaches the admin address (the
process lives; it serves and has joined its cluster; Prometheus counters: no digests or
addresses). Everything else needs the admin token,
`Authorization: Bearer <token>`: GET /_pollen/status (members, transfers, digests),
DELETE /_pollen/cache, POST /_pollen/gc (the store's check now: TTL, cache size, disk
watermarks; `?dry_run=1` only lists what would go), and POST /_pollen/preheat,
GET /_pollen/preheat[/ID] (preheat jobs: peer/preheat/). The token is the operator's
`--admin-token-file`, or one the node makes at start-up in `<data-dir>/admin.token`,
readable by the node's user only: who can read that file is who can administer the node (an
operator's file that others may read is left as it is, and warned of at start).
The registry port (`--http`) faces every client of the node and serves none of this.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from peer.front.http_server import HttpConnection, Request
from peer.front.oci_errors import OciError
from peer.preheat.api import BODY_LIMIT, parse_request
from peer.preheat.job import TooManyJobs
from peer.preheat.runner import Preheater
from pieces.modes import FILE_MODE, OTHERS, make_dir, user_name
from pieces.partial import StoreError
from pieces.store import Store

log = logging.getLogger("pollen.admin")

ADMIN_TOKEN_FILE = "admin.token"
_OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}


def load_admin_token(
    token_file: Path | None, data_dir: Path, default_name: str = ADMIN_TOKEN_FILE
) -> tuple[bytes, Path]:
    """A bearer token and the file it is in: `token_file` when given, else
    `<data_dir>/<default_name>` (admin.token); either is created (mode 0600) with a random
    token if missing. One that is there is the operator's (a mounted secret, say): left as
    it is, but warned of when its group or other users may read it (who reads the token uses
    the API it guards), and refused when neither the node's user nor root made it (or the
    link to it).

    Raises:
        ValueError: the file is empty, or another user's.
        OSError: it cannot be read, or the default one cannot be written.
    """
    path = token_file or data_dir / default_name
    if not path.exists():
        # Given or not: a new node (systemd's StateDirectory, say) starts with none.
        make_dir(path.parent)  # missing: 0700 (the missing ones above it: the umask's)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode):
        _check_owner(path, link.st_uid, "a symbolic link ")
    with open(path) as f:
        st = os.fstat(f.fileno())
        _check_owner(path, st.st_uid, "")
        mode = stat.S_IMODE(st.st_mode)
        token = f.read().strip()
    if mode & OTHERS:
        log.warning(
            "%s is mode %04o: its group or other local users may read the token in it, and "
            "with it use the API it guards; left as it is (chmod go= %s to close it)",
            path,
            mode,
            path,
        )
    if not token:
        raise ValueError(f"{path} is empty")
    return token.encode(), path


def _check_owner(path: Path, uid: int, what: str) -> None:
    """A token file (or a link to one) that a user other than the node's or root made is
    refused: they chose the token (in a data directory others may add to, a sticky one, they
    can put an admin.token there first, or a link to a file they can read).

    Raises:
        ValueError: refused.
    """
    if uid not in (os.geteuid(), 0):
        raise ValueError(
            f"{path} is {what}owned by {user_name(uid)}, neither the node's user nor root: "
            "refused (whoever made it knows the token)"
        )


class AdminFront:
    """Answers the admin listener's requests."""

    def __init__(
        self,
        store: Store,
        token: bytes,
        status: Callable[[], dict[str, object]],
        metrics: Callable[[], tuple[str, bytes]],
        readiness: Callable[[], tuple[bool, str]] = lambda: (True, "serving"),
        preheater: Preheater | None = None,
    ) -> None:
        self._store = store
        self._token = token
        self._status = status
        self._metrics = metrics
        self._readiness = readiness
        self._preheater = preheater

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        path = request.target.decode("ascii", "replace").partition("?")[0]
        try:
            if path not in _OPEN_PATHS:
                self._require_token(request)
            if path == "/healthz":
                await self._answer(conn, request, "text/plain", b"ok\n")
            elif path == "/readyz":
                ready, why = self._readiness()
                if not ready:
                    raise OciError(503, "UNAVAILABLE", f"not ready: {why}")
                await self._answer(conn, request, "text/plain", f"ready: {why}\n".encode())
            elif path == "/metrics":
                content_type, body = self._metrics()
                await self._answer(conn, request, content_type, body)
            elif path == "/_pollen/status":
                await self._answer(conn, request, "application/json", _json(self._status()))
            elif path == "/_pollen/cache":
                await self._flush(conn, request)
            elif path == "/_pollen/gc":
                await self._collect(conn, request)
            elif path == "/_pollen/preheat" or path.startswith("/_pollen/preheat/"):
                await self._preheat(conn, request, path.removeprefix("/_pollen/preheat"))
            else:
                raise OciError(404, "NOT_FOUND", f"no admin route {path[:200]}")
        except OciError as exc:
            headers = [("content-type", "application/json"), *exc.headers]
            await conn.respond(exc.status, headers, exc.body())

    def _require_token(self, request: Request) -> None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("latin-1"), self._token
        ):
            raise OciError(
                401,
                "UNAUTHORIZED",
                "the admin API needs 'Authorization: Bearer <token>' (the node's "
                "--admin-token-file, or <data-dir>/admin.token)",
                headers=(("www-authenticate", 'Bearer realm="pollen-admin"'),),
            )

    async def _answer(
        self, conn: HttpConnection, request: Request, content_type: str, body: bytes
    ) -> None:
        if request.method not in ("GET", "HEAD"):
            raise OciError(405, "UNSUPPORTED", f"{request.method} is not supported here")
        if request.method == "HEAD":
            headers = [("content-type", content_type), ("content-length", str(len(body)))]
            await conn.start_response(200, headers)
            await conn.end_response()
        else:
            await conn.respond(200, [("content-type", content_type)], body)

    async def _preheat(self, conn: HttpConnection, request: Request, rest: str) -> None:
        """POST /_pollen/preheat (start a job), GET /_pollen/preheat (all jobs),
        GET /_pollen/preheat/<id> (one)."""
        preheater = self._preheater
        if preheater is None:
            raise OciError(503, "UNAVAILABLE", "preheat is not running on this node")
        if rest in ("", "/") and request.method == "POST":
            body = await conn.read_body(BODY_LIMIT)  # over it: 413 (BodyTooLarge)
            try:
                job = preheater.start(parse_request(body))
            except ValueError as exc:  # BadRequest, or an image the node may not fetch from
                raise OciError(400, "BAD_REQUEST", str(exc)) from None
            except TooManyJobs as exc:
                raise OciError(429, "TOOMANYREQUESTS", str(exc)) from None
            await conn.respond(202, [("content-type", "application/json")], _json(job.document()))
            return
        if request.method not in ("GET", "HEAD"):
            raise OciError(405, "UNSUPPORTED", "POST /_pollen/preheat, GET /_pollen/preheat[/ID]")
        if rest in ("", "/"):
            jobs = [job.document() for job in preheater.jobs.all()]
            await self._answer(conn, request, "application/json", _json({"jobs": jobs}))
            return
        job_id = rest.removeprefix("/")
        found = preheater.jobs.find(job_id)
        if found is None:
            raise OciError(404, "NOT_FOUND", f"no preheat job {job_id[:40]!r}")
        await self._answer(conn, request, "application/json", _json(found.document()))

    async def _collect(self, conn: HttpConnection, request: Request) -> None:
        """POST /_pollen/gc[?dry_run=1]: run the store's periodic check now."""
        if request.method != "POST":
            raise OciError(405, "UNSUPPORTED", "use POST /_pollen/gc[?dry_run=1]")
        query = urllib.parse.parse_qs(request.target.decode("ascii", "replace").partition("?")[2])
        dry_run = query.get("dry_run", ["0"])[-1] in ("1", "true")
        try:
            gone = self._store.sweep(time.time(), dry_run=dry_run)
        except (OSError, StoreError) as exc:
            raise OciError(503, "UNAVAILABLE", f"the store's check failed: {exc}") from None
        if not dry_run:
            log.info("garbage collection through the admin API: %d evicted", len(gone))
        body = {
            "dry_run": dry_run,
            "bytes": sum(e.size for e in gone),
            "evicted": [
                {
                    "digest": e.digest,
                    "size": e.size,
                    "partial": e.partial,
                    "manifest": e.manifest,
                    "last_used": e.last_used,
                    "reason": e.reason,
                }
                for e in gone
            ],
        }
        await conn.respond(200, [("content-type", "application/json")], _json(body))

    async def _flush(self, conn: HttpConnection, request: Request) -> None:
        """DELETE /_pollen/cache: empty the cache (for benchmarks of cold pulls)."""
        if request.method != "DELETE":
            raise OciError(405, "UNSUPPORTED", "use DELETE /_pollen/cache to empty the cache")
        removed, freed = self._store.flush()  # on the loop: the ledger changes only there
        log.info("cache emptied through the admin API")
        body = json.dumps({"blobs_removed": removed, "bytes_freed": freed}).encode() + b"\n"
        await conn.respond(200, [("content-type", "application/json")], body)


def _json(document: object) -> bytes:
    return json.dumps(document, indent=2).encode() + b"\n"
