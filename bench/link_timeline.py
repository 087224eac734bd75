"""What each host's link carried over a testbed run, sampled from the switch's counters.

`pollen bench swarm --timeline SECONDS` answers where a run lost its time: was the origin's
uplink (what every host waits for) busy to the end, were the hosts' downlinks full, how long
did the last hosts take after the origin's last byte. The simulator answers the same for its
model (`bench simulate --timeline`); the testbed is where CPU, TCP and the shapers' queues
also play. The counters are the switch's ends of the hosts' links: what crossed the wire,
retransmissions included, but a GSO packet's headers counted once, not once per frame: a link
its shaper keeps full reads 96-100 %, by how many frames its GSO packets carry (one flow of
large ones through a 25 Mbit/s tbf: 23.91 Mbit/s of payload, the counters 0.44 % above that;
the registry's link in pollen's runs, full, 99-100 %).

`LinkSampler` reads the counters from a thread while the rollout runs; `timeline_rows` and
`timeline_table` turn the samples into rates (pure: tested without namespaces).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

# host name -> (bytes it sent, bytes it received, packets its downlink's shaper dropped) so far
Counters = dict[str, tuple[int, int, int]]
Sample = tuple[float, Counters]


class LinkSampler:
    """Reads `read()` every `period` seconds in a thread, from `start()` to `stop()`.

    A read is timed at its middle (an `ip` call takes a few ms); a tick missed while a read
    was slow is skipped, not caught up with back-to-back reads; the last interval, ended by
    `stop()`, is merged into the one before when shorter than half a period. Each makes an
    interval short, and a short interval's rates jump."""

    def __init__(self, read: Callable[[], Counters], period: float) -> None:
        if period <= 0:
            raise ValueError(f"the period must be > 0, got {period}")
        self._read = read
        self._period = period
        self._samples: list[Sample] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None  # the read that failed: no timeline
        self.started = 0.0  # time.monotonic() of the first sample

    def start(self) -> None:
        self.started = time.monotonic()
        try:
            self._sample()  # the baseline, before the thread runs
        except Exception as exc:
            self.error = exc
            return
        self._thread = threading.Thread(target=self._run, name="link-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        before = time.monotonic()
        counters = self._read()
        middle = (before + time.monotonic()) / 2
        self._samples.append((max(0.0, middle - self.started), counters))

    def _run(self) -> None:
        next_at = self.started + self._period
        while not self._stopping.wait(next_at - time.monotonic()):
            try:
                self._sample()
            except Exception as exc:  # kept for stop(): the run goes on without a timeline
                self.error = exc
                return
            now = time.monotonic()
            while next_at <= now:
                next_at += self._period

    def stop(self) -> list[Sample]:
        """Stop and return the samples, the last one taken now; none when a read failed
        (`error` says why): a timeline with a hole would mislead."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is None:
            try:
                self._sample()
            except Exception as exc:
                self.error = exc
        if self.error is not None:
            return []
        return without_short_tail(self._samples, self._period)


def without_short_tail(samples: list[Sample], period: float) -> list[Sample]:
    """`samples` with the one before the last left out when the last interval is shorter
    than half a period (and there is an interval before it to take it in)."""
    if len(samples) > 2 and samples[-1][0] - samples[-2][0] < period / 2:
        return [*samples[:-2], samples[-1]]
    return samples


def timeline_rows(
    samples: list[Sample], origin: str, hosts: list[str], shift: float = 0.0
) -> list[dict[str, Any]]:
    """One row per interval between samples: the origin's upload rate, each host's download
    and upload rates (bytes/s) and the packets its downlink's shaper dropped per second, from
    the interval's start and end counters; its times `shift` seconds earlier than the
    samples' (to count from when the hosts started)."""
    rows = []
    for (t0, before), (t1, after) in itertools.pairwise(samples):
        span = t1 - t0
        if span <= 0:
            continue
        sent = {host: (after[host][0] - before[host][0]) / span for host in [origin, *hosts]}
        received = {host: (after[host][1] - before[host][1]) / span for host in hosts}
        dropped = {host: (after[host][2] - before[host][2]) / span for host in hosts}
        rows.append(
            {
                "from_s": round(t0 - shift, 3),
                "to_s": round(t1 - shift, 3),
                "origin_up_bytes_per_s": round(sent[origin]),
                "down_bytes_per_s": {host: round(received[host]) for host in hosts},
                "up_bytes_per_s": {host: round(sent[host]) for host in hosts},
                "down_drops_per_s": {host: round(dropped[host], 1) for host in hosts},
            }
        )
    return rows


def timeline_table(
    rows: list[dict[str, Any]],
    done: dict[str, float | None],
    origin_rate: int,
    downlink_rate: int | None,
) -> str:
    """The rows as text: the origin's uplink busy against its rate, the hosts' downlinks
    (least, median, most; busy against their rate when shaped, else MB/s), the downlink
    whose shaper dropped most (packets a second: a full queue at one host can stall every
    host, docs/issue10/HISTORY.md *One blob at a time at 25 Mbit/s*) and how many hosts were
    done by the interval's end."""

    def share(value: float, rate: int | None) -> str:
        return f"{100 * value / rate:5.0f} %" if rate else f"{value / 1e6:5.1f} MB/s"

    header = (
        f"{'interval':>13}  {'origin up':>9}  {'hosts down: least':>17} {'median':>8} "
        f"{'most':>8}  {'hosts up: median':>16}  {'drops most':>14}  done"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        downs = sorted(row["down_bytes_per_s"].values())
        ups = sorted(row["up_bytes_per_s"].values())
        finished = sum(1 for t in done.values() if t is not None and t <= row["to_s"])
        origin_up = share(row["origin_up_bytes_per_s"], origin_rate)
        least, median = (
            share(downs[0], downlink_rate),
            share(statistics.median(downs), downlink_rate),
        )
        most, up = share(downs[-1], downlink_rate), share(statistics.median(ups), None)
        interval = f"{row['from_s']:5.1f}-{row['to_s']:5.1f}s"
        downlinks = f"{least:>17} {median:>8} {most:>8}"
        drops = _most_drops(row.get("down_drops_per_s", {}))
        lines.append(
            f"{interval:>13}  {origin_up:>9}  {downlinks}  {up:>16}  {drops:>14}  {finished}"
        )
    return "\n".join(lines)


def _most_drops(drops: dict[str, float]) -> str:
    """The host whose downlink dropped most, and how many packets a second ("-": none)."""
    if not drops or max(drops.values()) <= 0:
        return "-"
    host = max(drops, key=lambda name: drops[name])
    return f"{host} {drops[host]:.0f}/s"
