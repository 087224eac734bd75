"""Parsing large bodies off the event loop, in a worker process.

A body a registry sends (a manifest, an index) is JSON the node must parse, and JSON can be
built to parse slowly: 4 MiB of `[[]],` takes ~0.6 s, and `json.loads` holds the GIL
throughout, so a thread would stall the event loop as much as parsing on it. Every connection
of the node waited for each such parse (a helper's probe, 2026-12-04: `/healthz` p50 2.4 s
while one client had such manifests read). So a body over INLINE_BYTES is parsed in a worker
process; a smaller one (every real manifest but the largest indexes) costs at most ~10 ms
and is parsed in place.

What runs in the worker is a pure function of the body (`pieces/manifest_facts.read_facts`,
the preheat's readers), named by reference, and what crosses back is its small result.
Bounded: at most PARSES_IN_FLIGHT bodies are with the worker at once (others wait their
turn); the worker is started on the first large body, and started again if it dies (a parse
it could not finish fails that request only).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import trio

log = logging.getLogger("pollen.parser")

INLINE_BYTES = 64 * 1024  # bodies up to this are parsed on the event loop (~10 ms at worst)
PARSES_IN_FLIGHT = 4  # bodies handed to the worker at once (each up to 4 MiB in its pipe)
TASKS_PER_WORKER = 256  # a worker is replaced after this many parses (memory a parse left)

T = TypeVar("T")


class ParserFailed(RuntimeError):
    """The worker process died while it parsed a body (twice: a new worker failed too)."""


def _ignore_interrupts() -> None:
    """In the worker: a Ctrl-C at the terminal reaches the whole process group; the node
    stops its worker itself, and a traceback from it would only be noise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BodyParser:
    """Runs pure parsing functions of a body: in place when it is small, else in a worker
    process. One per node; `close` when the node stops."""

    def __init__(self, inline_bytes: int = INLINE_BYTES) -> None:
        self.inline_bytes = inline_bytes
        self._slots = trio.Semaphore(PARSES_IN_FLIGHT)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.parsed_in_worker = 0  # bodies parsed by the worker (read by /metrics)
        self.worker_restarts = 0  # workers started again after one died

    async def parse(self, read: Callable[[bytes], T], body: bytes) -> T:
        """`read(body)`: in place when `body` is at most `inline_bytes`, else in the worker.
        `read` must be a module-level function (or a `functools.partial` of one): the worker
        imports it by name. Exceptions it raises reach the caller as they are.

        Raises:
            ParserFailed: the worker died during the parse, and again in a new worker.
        """
        if len(body) <= self.inline_bytes:
            return read(body)
        async with self._slots:
            for attempt in range(2):
                future = self._worker().submit(read, body)
                try:
                    result = await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
                except BrokenProcessPool:
                    self._replace_worker()
                    if attempt:
                        raise ParserFailed("the parsing worker died twice on one body") from None
                    continue
                finally:
                    future.cancel()  # cancelled while it waits in line: it never runs
                self.parsed_in_worker += 1
                return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the worker (a parse in progress is left to end; its result is dropped)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _worker(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the node has threads (trio's, httpx's), and a fork copies
            # their locks as they are. The one-file binary spawns itself
            # (`multiprocessing.freeze_support` in `peer/__main__.py`).
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
                max_tasks_per_child=TASKS_PER_WORKER,
            )
        return self._pool

    def _replace_worker(self) -> None:
        log.warning("the parsing worker process died; starting another")
        self.worker_restarts += 1
        self.close()
