"""Parsing large bodies off the event loop, in a worker process.

A body a registry sends (a manifest, an index) is JSON the node must parse, and JSON can be
built to parse slowly: 4 MiB of `[[]],` takes ~0.6 s, and `json.loads` holds the GIL
throughout, so a thread would stall the event loop as much as parsing on it. Every connection
of the node waited for each such parse (a helper's probe, 2026-12-04: `/healthz` p50 2.4 s
while one client had such manifests read). So a body over INLINE_BYTES is parsed in a worker
process; a smaller one (nearly every real manifest) costs at most ~1.5 ms and is parsed in
place.

What runs in the worker is a pure function of the body (`pieces/manifest_facts.read_facts`,
the referrers' and preheat's readers), named by reference, and what crosses back is its small
result. The workers are trio-parallel's (a dependency: it kills a worker whose parse is
cancelled or times out, and starts another when one dies, which the standard library's process
pool does not: a worker that died while idle broke that pool for good, and its recycling
hung parses on Python 3.11, gh-115634; a helper's review). Bounded: WORKERS parse at once,
at most WAITING bodies wait for them (more: `ParserBusy`, 503), and a parse that takes over
PARSE_TIMEOUT is killed with its worker (`ParserFailed`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio
import trio_parallel

log = logging.getLogger("pollen.parser")

# Bodies up to this are parsed on the event loop: ~1.5 ms at worst. At 64 KiB (~6 ms), 8
# clients flooding such manifests took /healthz's p50 to 24 ms (a helper's probe); real image
# manifests are 1-3 KiB, indexes a few KiB.
INLINE_BYTES = 16 * 1024
WORKERS = 1  # worker processes parsing at once (the node has its event loop on another core)
WAITING = 16  # bodies waiting for a worker at most (each up to 4 MiB)
PARSE_TIMEOUT = 10.0  # seconds a parse may take (a 4 MiB body built to be slow: ~0.6 s)
IDLE_SECONDS = 600.0  # a worker with nothing to parse for this long exits (a new one spawns)

T = TypeVar("T")


class ParserFailed(RuntimeError):
    """The worker could not parse a body: it died, or took too long and was killed."""


class ParserBusy(RuntimeError):
    """As many bodies wait for the worker as may (try again)."""


class BodyParser:
    """Runs pure parsing functions of a body: in place when it is small, else in a worker
    process while `workers()` is open (the node holds it open while it runs)."""

    def __init__(self, inline_bytes: int = INLINE_BYTES, timeout: float = PARSE_TIMEOUT) -> None:
        self.inline_bytes = inline_bytes
        self.timeout = timeout
        self._context: Any = None  # a trio_parallel.WorkerContext while `workers()` is open
        self._limiter = trio.CapacityLimiter(WORKERS)
        self._worker_slot = trio.CapacityLimiter(WORKERS)  # free whenever `_limiter` is held
        self._queued = 0  # bodies handed to `parse` for the worker, not done yet
        self.parsed_in_worker = 0  # bodies parsed by a worker (read by /metrics)
        self.worker_failures = 0  # parses whose worker died or was killed

    @contextlib.asynccontextmanager
    async def workers(self) -> AsyncIterator[None]:
        """Large bodies are parsed while this is open; on leaving, the workers stop (killed
        after a second's grace)."""
        try:
            async with trio_parallel.open_worker_context(
                idle_timeout=IDLE_SECONDS, grace_period=1.0
            ) as context:
                self._context = context
                try:
                    yield
                finally:
                    self._context = None
        except trio_parallel.BrokenWorkerError as exc:
            # On the way out: a worker that had died (killed while idle, say) is reported
            # then; the node stops all the same.
            log.warning("a parsing worker had died: %s", exc)

    async def parse(self, read: Callable[[bytes], T], body: bytes) -> T:
        """`read(body)`: in place when `body` is at most `inline_bytes`, else in a worker.
        `read` must be a module-level function (or a `functools.partial` of one): the worker
        imports it by name. Exceptions it raises reach the caller as they are.

        Raises:
            ParserBusy: WAITING bodies wait for the worker already.
            ParserFailed: the worker died during the parse, or took over `timeout`.
        """
        if len(body) <= self.inline_bytes:
            return read(body)
        context = self._context
        if context is None:
            raise RuntimeError("a large body to parse, and no workers (BodyParser.workers)")
        if self._queued >= WORKERS + WAITING:
            raise ParserBusy(f"{WAITING} large manifests wait to be parsed already")
        self._queued += 1
        try:
            async with self._limiter:  # the wait for a worker is not timed: the parse is
                with trio.fail_after(self.timeout):
                    result: T = await context.run_sync(
                        read, body, kill_on_cancel=True, limiter=self._worker_slot
                    )
        except trio.TooSlowError:
            self.worker_failures += 1
            raise ParserFailed(
                f"parsing took over {self.timeout:g} s (its worker killed)"
            ) from None
        except trio_parallel.BrokenWorkerError as exc:
            self.worker_failures += 1
            log.warning("a parsing worker died: %s", exc)
            raise ParserFailed("the parsing worker died") from None
        finally:
            self._queued -= 1
        self.parsed_in_worker += 1
        return result
