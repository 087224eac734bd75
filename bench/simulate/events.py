"""The simulator's clock: timed callbacks, run in time order.

Two lanes feed one clock. Timers (deadlines, transfers ending, rate steps) go on a heap.
Messages go on a FIFO: every message takes the same one-way latency, so they arrive in the
order they were sent, and a deque keeps them in time order at O(1) each. At a thousand nodes
control messages (Have above all) are most of the events, so this lane is the hot one.

Ties: at equal times messages run before timers, and within a lane in the order they were
queued; with one seed that order, hence the whole run, is the same every time.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

Callback = Callable[[Any], None]


class EventQueue:
    def __init__(self) -> None:
        self.now = 0.0
        self.processed = 0
        self.stopped: str | None = None  # set by `stop`: the loop returns with this reason
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._fifo: deque[tuple[float, Callback, Any]] = deque()
        self._seq = 0
        self._fifo_last = 0.0

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Run `callback(arg)` at `time` (now, if `time` has passed)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time, self.now), self._seq, callback, arg))

    def post(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Like `at`, for callbacks queued in time order (messages with one latency)."""
        if time < self._fifo_last:
            raise ValueError("post() needs times in order; use at()")
        self._fifo_last = time
        self._fifo.append((time, callback, arg))

    def stop(self, reason: str) -> None:
        self.stopped = reason

    def pending(self) -> int:
        return len(self._heap) + len(self._fifo)

    def run(self, until: float, every: int, check: Callable[[], None]) -> str:
        """Run events up to simulated time `until`; call `check` every `every` events (it may
        call `stop`). Returns why it returned: the stop reason, "until" or "idle"."""
        heap, fifo = self._heap, self._fifo
        pop, popleft = heapq.heappop, fifo.popleft
        count = 0
        while self.stopped is None:
            if fifo and (not heap or fifo[0][0] <= heap[0][0]):
                time = fifo[0][0]
                if time > until:
                    self.now = until
                    return "until"
                _, callback, arg = popleft()
            elif heap:
                time = heap[0][0]
                if time > until:
                    self.now = until
                    return "until"
                _, _, callback, arg = pop(heap)
            else:
                return "idle"
            self.now = time
            callback(arg)
            count += 1
            if count >= every:
                self.processed += count
                count = 0
                check()
        self.processed += count
        return self.stopped
