"""Harbor's "P2P Preheat" drives pollen as one of its two providers, on a listener of its own
(`--preheat-listen`), behind a bearer token the operator gives Harbor's provider instance
(`--preheat-token-file`; Harbor's auth mode "OAuth" sends `Authorization: Bearer <token>`).
Nothing else is served there: the token can start preheat jobs and read them, no more.

As a Dragonfly instance (Harbor 2.12+, src/pkg/p2p/preheat/provider/dragonfly.go):
- GET /healthy: 2xx.
- POST /oapi/v1/jobs {"type": "preheat", "args": {"type": "image", "url":
  "https://harbor/v2/<repo>/manifests/<tag>", "headers": {"Authorization": "Bearer <jwt>"},
  "scope": "single_seed_peer" | "all_seed_peers" | "all_peers" (Harbor 2.13: "single_peer"),
  ...}} -> {"id": <int>, "state": "PENDING", "created_at": RFC 3339, "updated_at": ...}.
- GET /oapi/v1/jobs/<id> -> "state" PENDING (pending or running), SUCCESS or FAILURE, errors
  in result.job_states[].error. Harbor polls every 10 s; any other state fails its task.
Scopes: the seed-peer scopes are the blobs' owners ("owners"), all_peers every node ("all").

As a Kraken instance (src/pkg/p2p/preheat/provider/kraken.go):
- GET /health: 2xx.
- POST /registry/notifications {"events": [{"action": "push", "target": {"mediaType",
  "digest", "repository", "url", "tag"}}]} (Harbor writes the keys capitalised, the registry's
  notifications lower-case: both are read): a job per pushed manifest, by its digest, with
  the node's own logins (these events carry none). Answered 200 at once.

Harbor sends no platform: a multi-platform image is preheated for the node's own platform.
"""

from __future__ import annotations

import datetime
import hmac
import json
import logging
from typing import Any

from peer.fetch.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from peer.front.http_server import HttpConnection, Request
from peer.front.oci_errors import OciError
from peer.preheat.api import BODY_LIMIT
from peer.preheat.job import Job, JobState, TooManyJobs
from peer.preheat.refs import BadReference, ImageRef, parse_manifest_url
from peer.preheat.resolve import this_platform
from peer.preheat.runner import Preheater, PreheatRequest
from pieces.digest import InvalidDigest, digest_hex
from wire.names import is_authorization

log = logging.getLogger("pollen.preheat")

PREHEAT_TOKEN_FILE = "preheat.token"
MAX_EVENTS = 64  # push events read from one notification
HARBOR_SCOPES = {  # Harbor's (Dragonfly's) scope -> pollen's
    "": "owners",
    "single_peer": "owners",
    "single_seed_peer": "owners",
    "all_seed_peers": "owners",
    "all_peers": "all",
}
_STATES = {
    JobState.PENDING: "PENDING",
    JobState.RUNNING: "PENDING",
    JobState.SUCCEEDED: "SUCCESS",
    JobState.FAILED: "FAILURE",
}
MANIFEST_MEDIA_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)


class ProviderFront:
    def __init__(self, preheater: Preheater, token: bytes) -> None:
        self._preheater = preheater
        self._token = token

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        path = request.target.decode("ascii", "replace").partition("?")[0]
        try:
            self._require_token(request)
            if path in ("/healthy", "/health") and request.method == "GET":
                await _json(conn, 200, {"status": "ok"})
            elif path == "/oapi/v1/jobs" and request.method == "POST":
                job = self._start_dragonfly_job(await _body(conn))
                await _json(conn, 200, _dragonfly_job(job))
            elif path.startswith("/oapi/v1/jobs/") and request.method == "GET":
                job_id = path.removeprefix("/oapi/v1/jobs/")
                found = self._preheater.jobs.find(job_id)
                if found is None:
                    raise OciError(404, "NOT_FOUND", f"no job {job_id[:40]!r}")
                await _json(conn, 200, _dragonfly_job(found))
            elif path == "/registry/notifications" and request.method == "POST":
                started = self._start_kraken_jobs(await _body(conn))
                await _json(conn, 200, {"jobs": [job.id for job in started]})
            else:
                raise OciError(404, "NOT_FOUND", f"no route {request.method} {path[:200]}")
        except OciError as exc:
            headers = [("content-type", "application/json"), *exc.headers]
            await conn.respond(exc.status, headers, exc.body())

    def _require_token(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("latin-1"), self._token
        ):
            raise OciError(
                401,
                "UNAUTHORIZED",
                "needs 'Authorization: Bearer <token>' (the node's --preheat-token-file; in "
                "Harbor, the provider instance's OAuth token)",
                headers=(("www-authenticate", 'Bearer realm="pollen-preheat"'),),
            )

    def _start(self, request: PreheatRequest) -> Job:
        try:
            return self._preheater.start(request)
        except TooManyJobs as exc:
            raise OciError(429, "TOOMANYREQUESTS", str(exc)) from None
        except ValueError as exc:  # an image on a registry the node may not fetch from
            raise OciError(400, "BAD_REQUEST", str(exc)) from None

    def _start_dragonfly_job(self, document: dict[str, Any]) -> Job:
        args = document.get("args")
        if document.get("type") != "preheat" or not isinstance(args, dict):
            raise OciError(400, "BAD_REQUEST", 'a job needs "type": "preheat" and "args"')
        if args.get("type", "image") != "image":
            raise OciError(400, "UNSUPPORTED", 'only "image" preheat jobs are supported')
        scope = args.get("scope", "")
        if not isinstance(scope, str) or scope not in HARBOR_SCOPES:
            raise OciError(400, "BAD_REQUEST", f"unknown scope {str(scope)[:50]!r}")
        url = args.get("url")
        if not isinstance(url, str):
            raise OciError(400, "BAD_REQUEST", "args.url must be a manifest URL")
        try:
            image = parse_manifest_url(url)
        except BadReference as exc:
            raise OciError(400, "BAD_REQUEST", str(exc)) from None
        self._check_scheme(url, image)
        authorization = _authorization(args.get("headers"))
        job = self._start(
            PreheatRequest([image], [this_platform()], HARBOR_SCOPES[scope], authorization)
        )
        log.info("Harbor (as Dragonfly) preheats %s: job %d", image, job.id)
        return job

    def _check_scheme(self, url: str, image: ImageRef) -> None:
        """Harbor's URL says http or https; the node fetches the registry by its own mapping
        (https://<host> unless --upstream says otherwise): refuse a mismatch plainly rather
        than fail later on TLS."""
        scheme = url.strip().partition(":")[0].lower()
        base = self._preheater.registry_url(image.registry)
        if not base.startswith(f"{scheme}://"):
            raise OciError(
                400,
                "UNSUPPORTED",
                f"Harbor is at {scheme}://{image.registry}, the node fetches {base}: start the "
                f"node with --upstream {image.registry}={scheme}://{image.registry}",
            )

    def _start_kraken_jobs(self, document: dict[str, Any]) -> list[Job]:
        events = _get(document, "events")
        if not isinstance(events, list):
            raise OciError(400, "BAD_REQUEST", 'a notification needs a list of "events"')
        images: list[ImageRef] = []
        for event in events[:MAX_EVENTS]:
            pushed = _pushed_image(event)
            if pushed is not None and pushed[0] not in images:
                self._check_scheme(pushed[1], pushed[0])
                images.append(pushed[0])
        if not images:
            return []
        # One job for the whole notification: all of it starts, or none (a refusal that
        # came after some jobs had started would have Harbor's retry start them again).
        job = self._start(PreheatRequest(images, [this_platform()], "owners", None))
        log.info("Harbor (as Kraken) preheats %s: job %d", ", ".join(map(str, images)), job.id)
        return [job]


def _get(mapping: object, key: str) -> Any:
    """A key of a JSON object, read case-insensitively (Harbor capitalises its keys)."""
    if not isinstance(mapping, dict):
        return None
    for name, value in mapping.items():
        if isinstance(name, str) and name.lower() == key:
            return value
    return None


def _pushed_image(event: object) -> tuple[ImageRef, str] | None:
    """The manifest a push event names (pinned to its digest when it gives one) and its URL;
    None for other events (a pull, a blob push)."""
    if _get(event, "action") != "push":
        return None
    target = _get(event, "target")
    media_type, url, digest = _get(target, "mediatype"), _get(target, "url"), _get(target, "digest")
    if not isinstance(url, str) or (
        isinstance(media_type, str) and media_type not in MANIFEST_MEDIA_TYPES
    ):
        return None
    try:
        image = parse_manifest_url(url)
    except BadReference as exc:
        raise OciError(400, "BAD_REQUEST", str(exc)) from None
    if isinstance(digest, str):
        try:
            digest_hex(digest)
        except InvalidDigest as exc:
            raise OciError(400, "DIGEST_INVALID", str(exc)) from None
        image = ImageRef(image.registry, image.repository, digest)
    return image, url


def _authorization(headers: object) -> str | None:
    """The Authorization header among the job's headers (Harbor sends its registry token)."""
    if headers is None:
        return None
    if not isinstance(headers, dict) or len(headers) > 16:
        raise OciError(400, "BAD_REQUEST", "args.headers must be an object of a few headers")
    value = _get(headers, "authorization")
    if value is None:
        return None
    if not isinstance(value, str) or not is_authorization(value):
        raise OciError(400, "BAD_REQUEST", "args.headers.Authorization is not a usable header")
    return value


def _dragonfly_job(job: Job) -> dict[str, Any]:
    """A job as Dragonfly's manager shows one (the fields Harbor reads)."""
    document: dict[str, Any] = {
        "id": job.id,
        "type": "preheat",
        "state": _STATES[job.state],
        "created_at": _rfc3339(job.created),
        "updated_at": _rfc3339(job.updated),
        "result": {"job_states": [], "state": _STATES[job.state]},
    }
    if job.state is JobState.FAILED:
        document["result"]["job_states"] = [{"state": "FAILURE", "error": "; ".join(job.errors)}]
    return document


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


async def _body(conn: HttpConnection) -> dict[str, Any]:
    raw = await conn.read_body(BODY_LIMIT)  # over it: 413 (BodyTooLarge, an OciError)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise OciError(400, "BAD_REQUEST", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise OciError(400, "BAD_REQUEST", "the body is not a JSON object")
    return document


async def _json(conn: HttpConnection, status: int, document: object) -> None:
    body = json.dumps(document).encode() + b"\n"
    await conn.respond(status, [("content-type", "application/json")], body)
