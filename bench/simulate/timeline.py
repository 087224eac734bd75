"""Where a simulated run's time goes: every `period` seconds, how far the hosts are behind the
registry, and how busy their downlinks were since the last look (`--timeline`).

Why this view: where every host's downlink is as fast as the registry's uplink (the first
rollouts of the targets), a host can never receive faster than the registry sends, so what it
falls behind the registry is never made up. The last host is done when the registry's last
byte is out plus that host's lag; the lag is taken where pieces are slow to hop from host to
host (the first seconds: a piece must reach one host before another can ask it of that one)
and where downlinks idle later. The timeline says which.

A sample only reads the simulation (it runs as one more timed callback and changes nothing a
node sees): the same run with and without it ends the same. It stops looking when nothing else
is left to run, so a run that goes idle still stops as idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.simulate.report import percentile
from peer.sizes import format_size

if TYPE_CHECKING:
    from bench.simulate.node import SimNode
    from bench.simulate.world import Simulation


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # simulated seconds
    origin_bytes: int  # the registry has sent this much so far (every owner together)
    hosts_done: int  # live hosts that hold the whole image
    hosts_left: int  # live hosts that do not
    # Of the hosts not done: bytes the registry has sent that the host does not hold yet.
    # Stored pieces only (bytes on the way do not count): min, median, p90, max.
    behind: tuple[int, int, int, int] | None
    # Piece bytes the hosts not done at the last look stored since, over what their downlinks
    # could carry meanwhile (None: unshaped downlinks).
    received_share: float | None


def stored_bytes(node: SimNode) -> int:
    """Bytes of pieces the node holds, every blob together."""
    total = 0
    for state in node.blobs.values():
        layout = state.layout
        count = len(state.have)
        if not count:
            continue
        total += count * layout.piece_size
        last = layout.count - 1
        if last in state.have:
            total -= layout.piece_size - layout.length(last)
    return total


class Timeline:
    def __init__(self, sim: Simulation, period: float) -> None:
        if period <= 0:
            raise ValueError("the timeline's period must be positive")
        self.sim = sim
        self.period = period
        self.samples: list[Sample] = []
        self._stored: dict[str, int] = {}  # host -> its stored bytes at the last look
        # Hosts not done at the last look (at first: every host, holding nothing at time 0).
        self._left = {node.name for node in sim.nodes if node.alive}
        self._last_at = 0.0
        sim.queue.at(period, self._sample)

    def _sample(self, _arg: object) -> None:
        sim = self.sim
        now = sim.queue.now
        origin = sim.origin_bytes()
        stored: dict[str, int] = {}
        left: set[str] = set()
        done = 0
        for node in sim.nodes:
            if not node.alive:
                continue
            stored[node.name] = stored_bytes(node)
            if sim.clients[node.name].done_at is None:
                left.add(node.name)
            else:
                done += 1
        lags = sorted(origin - stored[name] for name in left)
        behind = (
            (lags[0], int(percentile(lags, 0.5) or 0), int(percentile(lags, 0.9) or 0), lags[-1])
            if lags
            else None
        )
        share = None
        downlink = sim.config.downlink
        if downlink is not None:
            counted = [name for name in self._left if name in stored]
            if counted:
                got = sum(stored[name] - self._stored.get(name, 0) for name in counted)
                share = got / (len(counted) * downlink * (now - self._last_at))
        self.samples.append(Sample(now, origin, done, len(left), behind, share))
        self._stored, self._left, self._last_at = stored, left, now
        if sim.queue.pending() and sim.queue.stopped is None:
            sim.queue.at(now + self.period, self._sample)


def timeline_table(samples: list[Sample], downlink: int | None) -> str:
    """The samples as a table; behind in bytes, and in seconds of a host's downlink."""

    def behind_text(value: int) -> str:
        seconds = f" {value / downlink:5.2f}s" if downlink else ""
        return f"{format_size(value):>10}{seconds}"

    header = (
        f"{'at':>7} {'registry sent':>13} {'done':>5} {'downlinks busy':>14}   "
        "behind the registry (hosts not done): min / median / p90 / max"
    )
    lines = [header, "-" * len(header)]
    for s in samples:
        busy = f"{s.received_share * 100:13.0f}%" if s.received_share is not None else "-"
        behind = " / ".join(behind_text(v) for v in s.behind) if s.behind else "-"
        lines.append(
            f"{s.at:6.1f}s {format_size(s.origin_bytes):>13} {s.hosts_done:>5} {busy:>14}   "
            f"{behind}"
        )
    return "\n".join(lines)
