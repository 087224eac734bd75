"""Preheat jobs, carried out: resolve each image to its manifests and blobs, warm every blob
on this node (through the swarm: each blob's owner fetches it from the registry, once), and,
with scope "all", ask every other live member to warm it too (a Warm each: they take it from
the swarm). The Warms other members send here are carried out by the same code.

Every fetch is the one a client's GET would make, with the job's credentials: the same owner,
swarm, access rules and private marking; nothing is served by a job. A blob this node warmed
is held against eviction until its job ends.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import trio

from peer.access.auth_gate import credentials_key
from peer.access.policy import AccessPolicy, CachedElsewhere
from peer.body_parser import ParserBusy, ParserFailed
from peer.fetch.coordinator import FetchCoordinator
from peer.fetch.download import BlobSource
from peer.fetch.manifest_reader import ManifestReader
from peer.fetch.manifests import ACCEPT_ALL, Manifest, fetch_manifest
from peer.log_throttle import LogThrottle
from peer.preheat.job import Job, JobState, JobTable, NodeProgress
from peer.preheat.leases import LEASE_SHARE, Leases
from peer.preheat.refs import ImageRef
from peer.preheat.resolve import (
    Blob,
    Platform,
    UnusableManifest,
    index_manifests,
    manifest_blobs,
)
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.swarm import Swarm
from peer.upstream.body_budget import BudgetSpent
from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from peer.upstream.node_auth import NodeAuth
from pieces.store import Store
from wire.events import Warm, Warmed

log = logging.getLogger("pollen.preheat")
T = TypeVar("T")

LOCAL_WORKERS = 4  # blobs this node warms at once for one job
MEMBER_WORKERS = 4  # Warms in flight to one member for one job
WARM_WORKERS = 4  # members' Warms carried out here at once
WARM_TIMEOUT = 3600.0  # seconds a member may take to answer one Warm
UNHELD_LOG_PERIOD = 60.0  # at most one line this often for Warms stored but not held
MAX_JOB_BLOBS = 4096  # blobs one job warms; the rest are reported, not warmed
SCOPES = ("owners", "all")


class ResolveFailed(Exception):
    """An image could not be resolved to blobs (the message is for the job's errors)."""


@dataclass(frozen=True)
class PreheatRequest:
    images: list[ImageRef]
    platforms: list[Platform] | None  # None: every platform of an index
    scope: str  # "owners": the blobs' owners (and this node); "all": every live member
    authorization: str | None  # the registry credentials to fetch with (None: anonymous)


class Preheater:
    def __init__(
        self,
        store: Store,
        upstreams: Upstreams,
        downloads: FetchCoordinator,
        access: AccessPolicy,
        swarm: Swarm | None,
        node_name: str,
        node_auth: NodeAuth,
        reader: ManifestReader,
    ) -> None:
        self._store = store
        self._reader = reader
        self._upstreams = upstreams
        self._downloads = downloads
        self._access = access
        self._swarm = swarm
        self._node = node_name  # this node in a job's progress (its node id, hex)
        self._node_auth = node_auth
        self.jobs = JobTable()
        self._nursery: trio.Nursery | None = None
        self.leases = Leases(store)  # blobs warmed for members' jobs, held a while
        self._unheld_told = LogThrottle(UNHELD_LOG_PERIOD)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run jobs and serve members' Warms until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._swarm is not None:
                for _ in range(WARM_WORKERS):
                    nursery.start_soon(self._serve_warms, self._swarm)
            task_status.started()
            try:
                while True:
                    await trio.sleep(10)
                    self.leases.expire(trio.current_time())
            finally:
                self.leases.expire(float("inf"))

    def registry_url(self, registry: str) -> str:
        """The base URL the node fetches `registry` (host[:port]) from."""
        return self._upstreams.base_url(registry)

    def start(self, request: PreheatRequest) -> Job:
        """Start a job; returns at once with its record.

        Raises:
            TooManyJobs: too many jobs are running.
            ValueError: an unknown scope, or an image on a registry the node may not fetch
                from (this host, a link-local service: the same rule as for clients).
        """
        assert self._nursery is not None, "Preheater.run first"
        if request.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {request.scope!r}")
        for image in request.images:
            self._upstreams.check_namespace(image.registry)
        platforms = [str(p) for p in request.platforms] if request.platforms else ["all"]
        job = self.jobs.create(
            [str(i) for i in request.images], request.scope, platforms, time.time()
        )
        self._nursery.start_soon(self._run_job, job, request)
        return job

    # ---- a job --------------------------------------------------------------------------

    async def _run_job(self, job: Job, request: PreheatRequest) -> None:
        job.state = JobState.RUNNING
        sources: dict[str, BlobSource] = {}
        try:
            for image in request.images:
                try:
                    headers = await self._headers(image, request.authorization)
                    blobs = await self._resolve(job, image, request.platforms, headers)
                except ResolveFailed as exc:
                    job.error(f"{image}: {exc}", time.time())
                    continue
                for blob in blobs:
                    if blob.digest not in job.blobs and len(job.blobs) >= MAX_JOB_BLOBS:
                        job.error(
                            f"{image}: over {MAX_JOB_BLOBS} blobs, the rest left out", time.time()
                        )
                        break
                    job.blobs.setdefault(blob.digest, blob.size)
                    key = credentials_key(headers)
                    source = BlobSource(blob.digest, image.registry, image.repository, headers, key)
                    sources.setdefault(blob.digest, source)
            log.info(
                "preheat job %d: %d images, %d blobs, %d bytes, scope %s",
                job.id,
                len(request.images),
                len(job.blobs),
                sum(job.blobs.values()),
                job.scope,
            )
            if sources:
                # The node's own login is asked again for every blob: a Bearer token bought
                # at the start would run out during a long job (Docker Hub's last 5 minutes).
                renew = request.authorization is None
                with contextlib.ExitStack() as holds:
                    async with trio.open_nursery() as nursery:
                        each = list(sources.values())
                        nursery.start_soon(self._warm_here, job, each, holds, renew)
                        for member in self._others(job.scope):
                            nursery.start_soon(self._warm_member, job, member, each, renew)
                    job.finish(time.time())  # blobs held until here
            else:
                job.finish(time.time())
        except Exception as exc:  # a bug: this job fails, the node goes on
            log.exception("preheat job %d failed (a bug)", job.id)
            job.error(f"internal error: {exc}", time.time())
            job.finish(time.time())
        log.info(
            "preheat job %d %s%s",
            job.id,
            job.state.value,
            f": {'; '.join(job.errors[:3])}" if job.errors else "",
        )

    async def _headers(self, image: ImageRef, authorization: str | None) -> dict[str, str]:
        """The job's credentials, else the node's login for the image's registry, if any.

        Raises:
            ResolveFailed: the node's login could not be used.
        """
        if authorization is None:
            try:
                authorization = await self._node_auth.authorization(
                    image.registry, image.repository
                )
            except UpstreamError as exc:
                raise ResolveFailed(
                    f"logging in with the node's --auth-file failed: {exc}"
                ) from None
        return {"authorization": authorization} if authorization else {}

    async def _resolve(
        self,
        job: Job,
        image: ImageRef,
        platforms: list[Platform] | None,
        headers: dict[str, str],
    ) -> list[Blob]:
        """The blobs of `image` (its manifests fetched and stored on the way).

        Raises:
            ResolveFailed: the registry refused, failed, or sent something unusable.
        """
        top = await self._manifest(image, image.reference, headers)
        job.manifests.append(top.digest)
        manifests = [top]
        if top.is_index:
            try:
                chosen = await self._parse(partial(index_manifests, platforms=platforms), top)
            except UnusableManifest as exc:
                raise ResolveFailed(str(exc)) from None
            manifests = []
            for digest in chosen:
                manifests.append(await self._manifest(image, digest, headers))
                job.manifests.append(digest)
        blobs: list[Blob] = []
        for manifest in manifests:
            try:
                blobs += await self._parse(manifest_blobs, manifest)
            except UnusableManifest as exc:
                raise ResolveFailed(f"manifest {manifest.digest}: {exc}") from None
        return blobs

    async def _parse(self, read: Callable[[bytes], T], manifest: Manifest) -> T:
        """`read(manifest.body)`, off the event loop when the body is large (a registry's
        manifest may be built to parse slowly: `peer/body_parser.py`).

        Raises:
            ResolveFailed: the parsing worker died on it.
        """
        try:
            return await self._reader.parser.parse(read, manifest.body)
        except (ParserFailed, ParserBusy) as exc:
            raise ResolveFailed(f"manifest {manifest.digest}: {exc}") from None

    async def _manifest(self, image: ImageRef, reference: str, headers: dict[str, str]) -> Manifest:
        asked = {**headers, "accept": ACCEPT_ALL}
        try:
            fetched = await fetch_manifest(
                self._upstreams,
                self._store,
                self._reader,
                image.registry,
                image.repository,
                reference,
                asked,
            )
        except UpstreamError as exc:
            raise ResolveFailed(f"the registry failed: {exc}") from None
        except (ParserFailed, ParserBusy, BudgetSpent) as exc:
            raise ResolveFailed(f"manifest {reference}: {exc}") from None
        if isinstance(fetched, UpstreamRefusal):
            raise ResolveFailed(_refusal_text(fetched, reference, bool(headers)))
        return fetched

    async def _renewed(self, source: BlobSource, renew: bool) -> BlobSource:
        """`source` with the node's login as it is now (`renew`: the job uses it)."""
        if not renew:
            return source
        try:
            value = await self._node_auth.authorization(source.namespace, source.name)
        except UpstreamError as exc:
            log.warning("renewing the node's login for %s failed: %s", source.name[:200], exc)
            return source
        headers = {"authorization": value} if value else {}
        key = credentials_key(headers)
        return BlobSource(source.digest, source.namespace, source.name, headers, key)

    async def _warm_here(
        self, job: Job, sources: list[BlobSource], holds: contextlib.ExitStack, renew: bool
    ) -> None:
        """Every blob on this node, LOCAL_WORKERS at a time; each held (from before it is
        looked at) until the job ends."""
        job.nodes.setdefault(self._node, NodeProgress())

        async def one(source: BlobSource) -> None:
            holds.enter_context(self._store.holding(source.digest))
            status, why = await self.warm(await self._renewed(source, renew))
            if status == 200:
                job.blob_done(self._node, source.digest, time.time())
            else:
                job.blob_failed(self._node, source.digest, why, time.time())

        await _each(sources, one, LOCAL_WORKERS)

    def _others(self, scope: str) -> list[bytes]:
        if scope != "all" or self._swarm is None:
            return []
        return [m.node_id for m in self._swarm.membership.alive()]

    async def _warm_member(
        self, job: Job, member: bytes, sources: list[BlobSource], renew: bool
    ) -> None:
        """Ask `member` to warm every blob, MEMBER_WORKERS at a time."""
        assert self._swarm is not None
        swarm = self._swarm
        name = member.hex()
        job.nodes.setdefault(name, NodeProgress())
        try:
            link = await swarm.link_to(member)
        except LinkClosed as exc:
            for source in sources:
                job.blob_failed(name, source.digest, f"unreachable: {exc}", time.time())
            return

        def alive() -> bool:
            return member in swarm.membership.alive_ids()

        async def one(source: BlobSource) -> None:
            source = await self._renewed(source, renew)
            answer = await swarm.warming.ask(
                link,
                source.digest,
                source.namespace,
                source.name,
                source.headers.get("authorization"),
                alive=alive,
                timeout=WARM_TIMEOUT,
            )
            if answer.status == 200:
                job.blob_done(name, source.digest, time.time())
            else:
                why = f"{answer.status} {answer.message}"
                job.blob_failed(name, source.digest, why, time.time())

        await _each(sources, one, MEMBER_WORKERS)

    # ---- one blob, for a job here or a member's Warm ----------------------------------------

    async def warm(self, source: BlobSource) -> tuple[int, str]:
        """Fetch and keep one blob as a client's GET would; (200, "") when it is stored,
        else (the registry's refusal status or 502, why)."""
        digest = source.digest
        # Held (or downloading) from other registries than the one named: fetched from that
        # one, as a client's GET does, whose verified bytes prove the access. (A 200 at once
        # told any member, with no credentials, that this node holds the private blob.)
        cached_elsewhere = False
        try:
            while True:
                if not cached_elsewhere and self._store.has_blob(digest):
                    refusal = await self._access.refusal(
                        source.namespace, source.name, "blobs", digest, source.headers
                    )
                    if isinstance(refusal, CachedElsewhere):
                        cached_elsewhere = True
                        continue
                    if refusal is None:
                        return 200, ""
                    return refusal.status, _refusal_text(refusal, digest, bool(source.headers))
                download = await self._downloads.join(source)
                await download.done.wait()
                if download.started_for(source, self._access.registry_of):
                    break
                # Another client's download, joined: the same check as for the stored blob.
                cached_elsewhere = False
        except UpstreamError as exc:
            return 502, f"the registry failed: {exc}"
        if download.refusal is not None:
            refusal = download.refusal
            return refusal.status, _refusal_text(refusal, digest, bool(source.headers))
        if download.error is not None:
            return 502, f"the download failed: {download.error}"
        if not self._store.has_blob(digest):
            return 502, "the download ended without the blob"
        return 200, ""

    async def _serve_warms(self, swarm: Swarm) -> None:
        while True:
            link, warm = await swarm.warming.take()
            await self._serve_warm(swarm, link, warm)

    async def _serve_warm(self, swarm: Swarm, link: PeerLink, warm: Warm) -> None:
        headers = {"authorization": warm.authorization} if warm.authorization else {}
        try:
            self._access.check_namespace(warm.namespace)
        except ValueError as exc:
            swarm.warming.answer(link, Warmed(warm.request, warm.digest, 400, str(exc)))
            return
        source = BlobSource(
            warm.digest, warm.namespace, warm.repository, headers, credentials_key(headers)
        )
        digest = warm.digest
        leases = self.leases
        held_before = digest in leases
        if not held_before and leases.full():
            why = f"this node holds {len(leases)} blobs for members' jobs: ask again later"
            swarm.warming.answer(link, Warmed(warm.request, digest, 503, why))
            return
        leases.hold_while_looking(digest, trio.current_time())
        try:
            status, why = await self.warm(source)
        except Exception as exc:  # a bug: answered, never ends the worker
            log.exception("warming %s for a member failed (a bug)", digest)
            status, why = 500, f"internal error: {exc}"
        if status != 200:
            if not held_before:
                leases.release(digest)  # a Warm that fails holds nothing new
        elif not leases.keep(digest, trio.current_time()):
            # Stored, and the cache's to evict: warmed as asked, but not held for the job.
            why = (
                f"stored, not held: blobs held for members' jobs would fill over "
                f"{LEASE_SHARE:.0%} of the cache ({leases.budget()} bytes)"
            )
            untold = self._unheld_told.event(trio.current_time())
            if untold is not None:
                log.warning("%s for a member's job: %s (%d more not told)", digest, why, untold)
        swarm.warming.answer(link, Warmed(warm.request, digest, status, why[:500]))


async def _each(
    items: list[BlobSource], work: Callable[[BlobSource], Awaitable[None]], workers: int
) -> None:
    """`work` on every item, `workers` at a time (a task per worker, not per item)."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    async with trio.open_nursery() as nursery:
        for _ in range(min(workers, len(items))):
            nursery.start_soon(worker)


def _refusal_text(refusal: UpstreamRefusal, what: str, with_credentials: bool) -> str:
    """A refusal said plainly: what the operator should do about it."""
    status = refusal.status
    if status in (401, 403):
        if with_credentials:
            return f"{status}: the registry refused the credentials for {what}"
        return (
            f"{status}: the registry wants credentials for {what} (give the node --auth-file, "
            "or the job an Authorization header)"
        )
    if status == 404:
        return f"404: the registry has no {what}"
    if status == 429:
        retry = refusal.headers.get("retry-after")
        return f"429: the registry limits requests{f' (retry after {retry} s)' if retry else ''}"
    return f"{status}: the registry refused {what}"
