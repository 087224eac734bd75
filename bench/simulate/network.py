"""The modelled network: every host has an uplink and a downlink; the core is not a bottleneck.

A *flow* is one busy connection from a sender to a receiver. It crosses two access links, the
sender's uplink and the receiver's downlink, and the flows share every link max-min fairly
(what many TCP flows with equal RTTs converge to): `max_min_rates` computes the shares by
progressive filling.

A connection carries one transfer at a time (a piece, or a run of pieces from the registry),
the next one after it at once: while its sender has more queued, the flow stays the same flow
at the same rate. Only flows starting or stopping change the allocation.

Recomputing the allocation on every such change is too slow for a thousand hosts (several
thousand flows, changing thousands of times a simulated second), so it is recomputed at most
every `rate_step` seconds of simulated time, on a fixed grid, and only when flows changed since
the last time. A flow that starts between two steps waits for the next one to get a rate (up to
`rate_step` idle); capacity a flow leaves is handed out at the next step too. Within a step the
rates are constant, so every transfer's end is computed exactly.

The step is DEFAULT_RATE_STEP, 5 ms: about what a TCP flow on a LAN takes to reach its share
(a round trip is well under a millisecond there). A coarser grid is not only less exact: it
hides what a shorter hop gains, since every piece's flow waits up to a step for its rate and
capacity freed waits as long. At 50 ms (the default until 2026-11-30), 100 hosts gave 1.20 x
T_min with 256 KiB pieces and 1.18 with 128 KiB; at 5 ms 1.18 and 1.13 (seed 0). Handing new
flows the capacity left at once, between steps, recovered almost none of it (1.20, 1.19): the
capacity that waits is what ended flows leave. 2 ms gives what 5 ms gives (100 hosts, seed 0:
the last host at 21.9 s both). The price in wall time is small at 100 hosts (48 s against 38
s); at 1,000 hosts `--rate-step 0.05` keeps a run within the hour.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from bench.simulate.events import EventQueue

DEFAULT_RATE_STEP = 0.005  # seconds between recomputations of the fair shares (see above)


class Feeder(Protocol):
    """What a flow sends: the sender's queue for one connection."""

    def next_transfer(self, now: float) -> int | None:
        """Bytes of the next transfer to start now, or None: nothing queued (the flow idles)."""

    def transfer_done(self, now: float, nbytes: int) -> None:
        """The transfer started last has been sent completely."""


def max_min_rates(
    flows: Sequence[tuple[int, int]],
    uplinks: Sequence[float],
    downlinks: Sequence[float | None],
) -> list[float]:
    """The max-min fair rate of each flow (sender, receiver), given each host's uplink and
    downlink capacity (None: an unshaped downlink, never a bottleneck).

    Progressive filling: all rates grow together; the link whose capacity left, split evenly
    over its flows still growing, is smallest saturates first; its flows keep that share and
    leave the others' capacity. O(F log L) with a heap of link shares."""
    hosts = len(uplinks)
    capacity: dict[int, float] = {}
    members: dict[int, list[int]] = {}
    for index, (sender, receiver) in enumerate(flows):
        group = members.get(sender)
        if group is None:
            members[sender] = [index]
            capacity[sender] = float(uplinks[sender])
        else:
            group.append(index)
        down = downlinks[receiver]
        if down is not None:
            link = hosts + receiver
            group = members.get(link)
            if group is None:
                members[link] = [index]
                capacity[link] = float(down)
            else:
                group.append(index)
    growing = {link: len(group) for link, group in members.items()}
    heap = [(capacity[link] / count, link) for link, count in growing.items()]
    heapq.heapify(heap)
    rates = [-1.0] * len(flows)
    while heap:
        share, link = heapq.heappop(heap)
        count = growing[link]
        if count == 0 or share != max(capacity[link], 0.0) / count:
            continue  # an outdated entry: the link's share changed since it was pushed
        growing[link] = 0
        for index in members[link]:
            if rates[index] >= 0.0:
                continue
            rates[index] = share
            sender, receiver = flows[index]
            other = hosts + receiver if link < hosts else sender
            left = growing.get(other, 0)
            if left:
                growing[other] = left - 1
                capacity[other] -= share
                if left > 1:
                    heapq.heappush(heap, (max(capacity[other], 0.0) / (left - 1), other))
    return rates


class Flow:
    __slots__ = (
        "active",
        "closed",
        "dst",
        "feeder",
        "rate",
        "remaining",
        "sent",
        "size",
        "src",
        "synced",
        "version",
    )

    def __init__(self, src: int, dst: int, feeder: Feeder) -> None:
        self.src = src
        self.dst = dst
        self.feeder = feeder
        self.active = False  # a transfer is under way (or waits for its first rate)
        self.closed = False
        self.rate = 0.0
        self.size = 0  # bytes of the transfer under way
        self.remaining = 0.0  # of it, as of `synced`
        self.synced = 0.0
        self.version = 0  # bumped whenever the scheduled end moves: older ends are void
        self.sent = 0  # bytes delivered in all (completed transfers and parts of cut ones)


class Network:
    def __init__(
        self,
        queue: EventQueue,
        uplinks: list[float],
        downlinks: list[float | None],
        rate_step: float,
    ) -> None:
        if rate_step <= 0:
            raise ValueError("the rate step must be positive")
        self.queue = queue
        self.uplinks = uplinks
        self.downlinks = downlinks
        self.rate_step = rate_step
        self.active: dict[Flow, None] = {}  # insertion-ordered: the same run, the same order
        self.recomputations = 0
        self.most_flows = 0
        # Called with a flow that started or stopped sending (a transfer, or back-to-back
        # transfers on one connection): what a receiving node sees as a link delivering.
        self.on_activity: Callable[[Flow], None] | None = None
        self._dirty = False
        self._step_pending = False

    def add_host(self, uplink: float, downlink: float | None) -> int:
        self.uplinks.append(uplink)
        self.downlinks.append(downlink)
        return len(self.uplinks) - 1

    def open(self, src: int, dst: int, feeder: Feeder) -> Flow:
        """A connection from host `src` to host `dst`; idle until `wake`."""
        return Flow(src, dst, feeder)

    def wake(self, flow: Flow) -> None:
        """The feeder has something queued: start sending it (a no-op while busy)."""
        if flow.active or flow.closed:
            return
        size = flow.feeder.next_transfer(self.queue.now)
        if size is None:
            return
        flow.active = True
        flow.size = size
        flow.remaining = float(size)
        flow.rate = 0.0  # until the next step gives it one
        flow.synced = self.queue.now
        flow.version += 1
        self.active[flow] = None
        self._changed()
        self._activity(flow)

    def close(self, flow: Flow) -> None:
        """The connection is gone (a host died): what was under way is cut off."""
        if flow.closed:
            return
        flow.closed = True
        flow.version += 1
        if flow.active:
            flow.active = False
            self._sync(flow)
            flow.sent += int(flow.size - flow.remaining)
            del self.active[flow]
            self._changed()
            self._activity(flow)

    def _changed(self) -> None:
        self._dirty = True
        if not self._step_pending:
            self._step_pending = True
            step = self.rate_step
            # The next point of the grid strictly after now (a step never runs twice at once).
            at = (math.floor(self.queue.now / step + 1e-9) + 1) * step
            self.queue.at(at, self._step)

    def _activity(self, flow: Flow) -> None:
        if self.on_activity is not None:
            self.on_activity(flow)

    def _sync(self, flow: Flow) -> None:
        if flow.rate:
            flow.remaining = max(0.0, flow.remaining - flow.rate * (self.queue.now - flow.synced))
        flow.synced = self.queue.now

    def _step(self, _arg: object) -> None:
        self._step_pending = False
        if not self._dirty:
            return
        self._dirty = False
        self.recomputations += 1
        flows = list(self.active)
        self.most_flows = max(self.most_flows, len(flows))
        rates = max_min_rates([(f.src, f.dst) for f in flows], self.uplinks, self.downlinks)
        now = self.queue.now
        for flow, rate in zip(flows, rates, strict=True):
            if rate == flow.rate:
                continue  # its end, scheduled at that rate, still holds
            self._sync(flow)
            flow.rate = rate
            flow.version += 1
            if rate > 0:
                self.queue.at(now + flow.remaining / rate, self._end, (flow, flow.version))

    def _end(self, arg: tuple[Flow, int]) -> None:
        flow, version = arg
        if flow.version != version:
            return  # rescheduled at another rate, or closed
        now = self.queue.now
        flow.sent += flow.size
        flow.feeder.transfer_done(now, flow.size)
        if flow.closed:
            return
        size = flow.feeder.next_transfer(now)
        flow.version += 1
        if size is None:
            flow.active = False
            flow.rate = 0.0
            del self.active[flow]
            self._changed()
            self._activity(flow)
            return
        # The next transfer on the same connection: the same flow, at the same rate.
        flow.size = size
        flow.remaining = float(size)
        flow.synced = now
        self.queue.at(now + size / flow.rate, self._end, (flow, flow.version))
