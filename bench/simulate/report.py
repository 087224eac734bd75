"""What `pollen bench simulate` prints and writes: `bench swarm`'s summary, JSON and chart, with
what only a simulation knows added (p99, duplicates, counters), and what it cannot know
(the machine's CPU) left out.

The JSON document holds the run's parameters and results, never wall-clock times: the same
parameters and seed give the same document, byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.rollout import Outcome
from bench.simulate.world import Result
from bench.swarm_report import summary, write_chart, write_json
from peer.sizes import format_size

if TYPE_CHECKING:
    from bench.simulate.timeline import Sample

CONTENDER = "pollen (simulated)"

__all__ = ["document", "summarize", "table", "write_chart", "write_json", "write_outputs"]


def percentile(times: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile of sorted `times` (None when empty)."""
    if not times:
        return None
    return times[max(0, math.ceil(share * len(times)) - 1)]


def summarize(result: Result) -> dict[str, Any]:
    """`bench swarm`'s summary of one contender, for the nodes that were not killed."""
    image = sum(b.size for b in result.blobs)
    done = {name: t for name, t in result.done.items() if name not in result.killed}
    outcome = Outcome(CONTENDER, done=done, origin_payload=result.origin_bytes)
    outcome.origin_wire = result.origin_bytes  # no headers, no retransmits in the model
    for name, t in done.items():
        if t is None:
            outcome.errors[name] = f"not done when the run stopped ({result.stop})"
    s = summary(outcome, image, result.config.bound())
    del s["machine_cpu_busy"]  # CPU is not modelled
    p99 = percentile(outcome.times, 0.99)
    s["p99_done_s"] = round(p99, 3) if p99 is not None else None
    s["duplicate_bytes"] = result.stats.duplicate_bytes
    s["duplicate_over_image"] = round(result.stats.duplicate_bytes / image, 4)
    return s


def table(s: dict[str, Any], bound: float) -> str:
    header = (
        f"{'contender':<19} {'first':>8} {'median':>8} {'p99':>8} {'last':>8} "
        f"{'last/T_min':>10} {'origin sent':>12} {'x image':>8} {'duplicates':>11}  hosts"
    )

    def seconds(value: float | None) -> str:
        return f"{value:.1f}s" if value is not None else "-"

    ratio = f"{s['last_over_t_min']:.2f}" if s["last_over_t_min"] is not None else "-"
    row = (
        f"{s['contender']:<19} {seconds(s['first_done_s']):>8} {seconds(s['median_done_s']):>8} "
        f"{seconds(s['p99_done_s']):>8} {seconds(s['last_done_s']):>8} {ratio:>10} "
        f"{format_size(s['origin_payload_bytes']):>12} {s['origin_payload_over_image']:>8.3f} "
        f"{format_size(s['duplicate_bytes']):>11}  {s['hosts_done']}/{s['hosts']}"
    )
    return "\n".join(
        [
            header,
            "-" * len(header),
            row,
            f"T_min = {bound:.3g}s (Kumar & Ross lower bound for these bytes and links)",
        ]
    )


def document(
    result: Result, s: dict[str, Any], timeline: list[Sample] | None = None
) -> dict[str, Any]:
    config = result.config
    doc = {
        "simulator": "pollen bench simulate",
        "nodes": config.nodes,
        "uplink_bytes_per_s": config.uplink,
        "slow_hosts": config.slow_hosts,
        "slow_uplink_bytes_per_s": config.slow_uplink,
        "downlink_bytes_per_s": config.downlink,
        "origin_uplink_bytes_per_s": config.origin_up,
        "latency_s": config.latency,
        "piece_size": config.piece_size,
        "pieces_per_blob": config.pieces_per_blob,
        "parallel": config.parallel,
        "client_read_bytes_per_s": config.client_read,
        "seed": config.seed,
        "tokens": config.tokens,
        "rate_step_s": config.rate_step,
        "max_time_s": config.max_time,
        "kills": [asdict(k) for k in config.kills],
        "joins": [asdict(j) for j in config.joins],
        "image_bytes": sum(b.size for b in result.blobs),
        "blobs": [asdict(b) for b in result.blobs],
        "layers": [b.size for b in result.blobs if b.kind == "layer"],
        "t_min_s": round(config.bound(), 3),
        "stop": result.stop,
        "simulated_s": round(result.simulated_s, 3),
        "killed_s": {name: round(t, 3) for name, t in sorted(result.killed.items())},
        "joined_s": {name: round(t, 3) for name, t in sorted(result.joined.items())},
        "results": [s],
        "counters": result.stats.as_dict(),
        "events": result.events,
        "rate_recomputations": result.rate_recomputations,
        "most_flows": result.most_flows,
    }
    if timeline is not None:
        doc["timeline"] = [asdict(sample) for sample in timeline]
    return doc


def write_outputs(
    result: Result,
    s: dict[str, Any],
    json_path: Path | None,
    chart_path: Path | None,
    timeline: list[Sample] | None = None,
) -> None:
    if json_path is not None:
        write_json(json_path, document(result, s, timeline))
    if chart_path is not None:
        config = result.config
        image = sum(b.size for b in result.blobs)
        title = (
            f"simulated: {config.nodes} hosts, {format_size(image)}, "
            f"{config.uplink * 8 / 1e6:g} Mbit/s links, seed {config.seed}"
        )
        write_chart(chart_path, [s], config.bound(), None, title)
