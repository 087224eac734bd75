"""A preheat job's record: what it was asked, what it found, how far each node got, and how
it ended. Kept by the JobTable (bounded: the last MAX_JOBS jobs), shown by the admin API,
`pollen preheat --wait`, `pollen status`, and Harbor's view of a Dragonfly job.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

MAX_JOBS = 100  # jobs kept (finished ones are dropped oldest first)
MAX_RUNNING = 8  # jobs running at once; more are refused (the caller retries)
MAX_ERRORS = 50  # error lines kept per job


class JobState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class TooManyJobs(RuntimeError):
    """MAX_RUNNING jobs run already."""


@dataclass
class NodeProgress:
    blobs_done: int = 0
    bytes_done: int = 0
    failed: int = 0


@dataclass
class Job:
    id: int
    images: list[str]
    scope: str  # "owners" or "all"
    platforms: list[str]  # ["all"]: every platform of an index
    created: float  # wall-clock seconds
    updated: float
    state: JobState = JobState.PENDING
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size (the manifest's)
    manifests: list[str] = field(default_factory=list)
    nodes: dict[str, NodeProgress] = field(default_factory=dict)  # node id (hex) -> progress
    errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)

    def error(self, message: str, now: float) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("... more errors left out")
        self.updated = now

    def blob_done(self, node: str, digest: str, now: float) -> None:
        progress = self.nodes.setdefault(node, NodeProgress())
        progress.blobs_done += 1
        progress.bytes_done += self.blobs.get(digest, 0)
        self.updated = now

    def blob_failed(self, node: str, digest: str, why: str, now: float) -> None:
        self.nodes.setdefault(node, NodeProgress()).failed += 1
        self.error(f"{digest} on node {node}: {why}", now)

    def finish(self, now: float) -> None:
        """Succeeded when every blob reached every node and nothing failed."""
        complete = all(p.blobs_done == len(self.blobs) for p in self.nodes.values())
        ok = bool(self.blobs) and complete and not self.errors
        self.state = JobState.SUCCEEDED if ok else JobState.FAILED
        self.updated = now

    def document(self) -> dict[str, object]:
        """The job as the admin API shows it."""
        return {
            "id": self.id,
            "state": self.state.value,
            "images": self.images,
            "scope": self.scope,
            "platforms": self.platforms,
            "created_at": self.created,
            "updated_at": self.updated,
            "manifests": self.manifests,
            "blobs": len(self.blobs),
            "bytes": sum(self.blobs.values()),
            "nodes": {
                node: {"blobs_done": p.blobs_done, "bytes_done": p.bytes_done, "failed": p.failed}
                for node, p in self.nodes.items()
            },
            "errors": self.errors,
        }


class JobTable:
    def __init__(self, first_id: int | None = None) -> None:
        self._jobs: dict[int, Job] = {}
        # Numbered from the start-up time in milliseconds: after a restart, a caller that
        # polls an old job's number (Harbor) finds nothing rather than another job.
        self._ids = itertools.count(first_id if first_id is not None else int(time.time() * 1000))

    def create(self, images: list[str], scope: str, platforms: list[str], now: float) -> Job:
        """A new pending job.

        Raises:
            TooManyJobs: MAX_RUNNING jobs have not finished yet.
        """
        if sum(1 for j in self._jobs.values() if not j.finished) >= MAX_RUNNING:
            raise TooManyJobs(f"{MAX_RUNNING} preheat jobs are running: try again when one ends")
        job = Job(next(self._ids), images, scope, platforms, now, now)
        self._jobs[job.id] = job
        finished = [j for j in self._jobs.values() if j.finished]
        for old in finished[: max(0, len(self._jobs) - MAX_JOBS)]:
            del self._jobs[old.id]
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def find(self, text: str) -> Job | None:
        """The job a path names by its number (anything else: None)."""
        if not (text.isascii() and text.isdigit() and len(text) < 19):
            return None
        return self._jobs.get(int(text))

    def all(self) -> list[Job]:
        return list(self._jobs.values())
