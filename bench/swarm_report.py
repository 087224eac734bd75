"""What `pollen bench swarm` prints and writes: a table, a JSON document, a PNG chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.rollout import Outcome
from peer.cluster.rendezvous import owner_order
from peer.sizes import format_size


def summary(
    outcome: Outcome, image_bytes: int, bound: float, payload_bound: float | None = None
) -> dict[str, Any]:
    """One contender's results; the last host against `payload_bound` too where one is
    given (the testbed's: the simulator's rates are payload already)."""
    times = outcome.times
    last = max(times) if outcome.complete and times else None
    against_payload = (
        {} if payload_bound is None else {"last_over_payload_bound": _ratio(last, payload_bound)}
    )
    return {
        "contender": outcome.contender,
        "hosts": len(outcome.done),  # the survivors, when hosts were killed
        "hosts_done": len(times),
        "hosts_killed": {h: round(t, 3) for h, t in sorted(outcome.killed.items())},
        "hosts_joined": {h: round(t, 3) for h, t in sorted(outcome.joined.items())},
        "first_done_s": round(min(times), 3) if times else None,
        "median_done_s": round(statistics.median(times), 3) if times else None,
        "last_done_s": round(last, 3) if last is not None else None,
        "last_over_t_min": _ratio(last, bound),
        **against_payload,
        "origin_payload_bytes": outcome.origin_payload,
        "origin_payload_over_image": round(outcome.origin_payload / image_bytes, 4),
        "origin_wire_bytes": outcome.origin_wire,
        "machine_cpu_busy": round(outcome.cpu_busy, 3),
        "client_cpu_s": round(outcome.client_cpu_s, 2),
        "daemon_cpu_s": round(outcome.daemon_cpu_s, 2),
        "per_host_done_s": {
            h: (round(t, 3) if t is not None else None) for h, t in sorted(outcome.done.items())
        },
        "errors": outcome.errors,
        **({"losses": outcome.losses.as_dict()} if outcome.losses is not None else {}),
        **({"losses_error": outcome.losses_error} if outcome.losses_error else {}),
        **({"timeline": outcome.timeline} if outcome.timeline else {}),
    }


def _ratio(last: float | None, bound: float) -> float | None:
    """The last host's time over a bound (None: not every host was done)."""
    return round(last / bound, 3) if last is not None else None


def blob_owners(
    digests: list[str], node_ids: dict[str, str], uplinks: dict[str, int]
) -> dict[str, str]:
    """digest -> the host whose node owned it (first in rendezvous order over all nodes,
    weighted by the uplinks they declare, as every node computes it while all are alive):
    which host fetched it from the origin."""
    hosts = {bytes.fromhex(node_id): host for host, node_id in node_ids.items()}
    capacity = {node: uplinks.get(host, 0) for node, host in hosts.items()}
    return {digest: hosts[owner_order(digest, hosts, capacity)[0]] for digest in digests}


def table(summaries: list[dict[str, Any]], bound: float, payload_bound: float) -> str:
    header = (
        f"{'contender':<11} {'first':>8} {'median':>8} {'last':>8} {'last/T_min':>10} "
        f"{'/payload':>8} "
        f"{'origin sent':>12} {'x image':>8} {'CPU busy':>8}  hosts"
    )
    lines = [header, "-" * len(header)]

    def seconds(value: float | None) -> str:
        return f"{value:.1f}s" if value is not None else "-"

    for s in summaries:
        ratio = f"{s['last_over_t_min']:.2f}" if s["last_over_t_min"] is not None else "-"
        over_payload = s.get("last_over_payload_bound")  # absent where none was given
        payload_ratio = f"{over_payload:.3f}" if over_payload is not None else "-"
        lines.append(
            f"{s['contender']:<11} {seconds(s['first_done_s']):>8} "
            f"{seconds(s['median_done_s']):>8} {seconds(s['last_done_s']):>8} {ratio:>10} "
            f"{payload_ratio:>8} "
            f"{format_size(s['origin_payload_bytes']):>12} "
            f"{s['origin_payload_over_image']:>8.3f} {s['machine_cpu_busy']:>8.0%}  "
            f"{s['hosts_done']}/{s['hosts']}"
        )
    lines.append(f"T_min = {bound:.3g}s (Kumar & Ross lower bound for these bytes and links)")
    lines.append(
        f"payload bound = {payload_bound:.4g}s (T_min at the rates TCP's payload gets on these "
        "links, headers taken out: the bound a transfer over TCP can reach)"
    )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_chart(
    path: Path,
    summaries: list[dict[str, Any]],
    bound: float,
    payload_bound: float | None,
    title: str,
) -> None:
    """Each contender's host completion times (sorted, one line per contender), T_min and the
    payload bound (None in documents written before it was)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    for s in summaries:
        times = sorted(t for t in s["per_host_done_s"].values() if t is not None)
        if times:
            axes.step(
                times, range(1, len(times) + 1), where="post", marker=".", label=s["contender"]
            )
    axes.axvline(bound, color="black", linestyle="--", linewidth=1, label="T_min")
    if payload_bound is not None:
        axes.axvline(payload_bound, color="grey", linestyle=":", linewidth=1, label="payload bound")
    axes.set_xlabel("seconds since all hosts started")
    axes.set_ylabel("hosts done")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xlim(left=0)
    axes.legend(loc="upper left")  # hosts finish late in the run: the lines are on the right
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
