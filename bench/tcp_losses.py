"""What TCP lost on the testbed while a contender ran: segments retransmitted, and packets the
shapers dropped.

Why it is reported: a host's link can look busy (the timeline counts what crossed the wire)
while part of what it carries is the same bytes again, and a control message that waits for a
lost segment waits for the retransmission (on the testbed, 8 hosts at 25 Mbit/s, a Request to
an owner whose downlink was full took 8-22 s). Every host's shaper is a tbf with a short queue
(bench/testbed.py): a sender that overruns it loses packets at its own uplink, a host's
downlink drops what the switch cannot queue for it.

The counters are the kernel's, per network namespace: `Tcp: OutSegs RetransSegs` of
/proc/net/snmp (segments, not packets: a GSO packet counts as the segments it carries) and the
`drops` of the tbf shapers `tc -s` shows. `Losses` holds their sums over the hosts; the
difference of two readings is what happened between them. Parsing is pure (tested without
namespaces).
"""

from __future__ import annotations

import json
import operator
from dataclasses import astuple, dataclass


@dataclass(frozen=True)
class Losses:
    segments: int = 0  # TCP segments sent, pure ACKs included, retransmissions not (OutSegs)
    retransmitted: int = 0  # TCP segments sent again (RetransSegs)
    # Packets the shapers dropped: the hosts' own (their uplinks) and the switch's (the hosts'
    # downlinks). A veth hands its qdisc GSO packets of up to 64 KiB: one drop may be tens of
    # segments (about 10 retransmitted segments per drop in the 25 Mbit/s runs).
    uplink_drops: int = 0
    downlink_drops: int = 0

    def __add__(self, other: Losses) -> Losses:
        return Losses(*map(operator.add, astuple(self), astuple(other)))

    def __sub__(self, other: Losses) -> Losses:
        return Losses(*map(operator.sub, astuple(self), astuple(other)))

    @property
    def retransmitted_share(self) -> float:
        """Of every segment sent, the share that were retransmissions (a share of data
        segments alone would be larger: about a third of what a receiver sends are ACKs)."""
        sent = self.segments + self.retransmitted
        return self.retransmitted / sent if sent else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tcp_segments": self.segments,
            "tcp_retransmitted": self.retransmitted,
            "tcp_retransmitted_share": round(self.retransmitted_share, 4),
            "uplink_drops": self.uplink_drops,
            "downlink_drops": self.downlink_drops,
        }

    def describe(self) -> str:
        return (
            f"TCP retransmitted {100 * self.retransmitted_share:.1f} % of the "
            f"{self.segments + self.retransmitted:,} segments sent (pure ACKs included); "
            "shapers dropped "
            f"{self.uplink_drops:,} (GSO) packets at the uplinks, {self.downlink_drops:,} at "
            "the downlinks"
        )


class UnreadableCounters(ValueError):
    """A counter file or `tc` answer that is not what the kernel writes."""


def tcp_segments(snmp: str) -> tuple[int, int]:
    """(OutSegs, RetransSegs) from the text of /proc/net/snmp: a `Tcp:` line of names, then
    one of values."""
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Tcp:")]
    if len(lines) != 2 or len(lines[0]) != len(lines[1]):
        raise UnreadableCounters("no Tcp: header and values in /proc/net/snmp")
    values = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    try:
        return int(values["OutSegs"]), int(values["RetransSegs"])
    except (KeyError, ValueError) as exc:
        raise UnreadableCounters(f"Tcp: OutSegs and RetransSegs unreadable: {exc}") from None


def qdisc_drops(tc_json: str) -> int:
    """The packets the shapers (`tbf` qdiscs) in `tc -s -j qdisc show` dropped, summed. Only
    the shapers: with --rtt or --loss a `netem` qdisc sits above a host's tbf and counts its
    child's drops again, besides the losses it makes on purpose."""
    return sum(qdisc_drops_by_device(tc_json).values())


def qdisc_drops_by_device(tc_json: str) -> dict[str, int]:
    """The shapers' drops in `tc -s -j qdisc show`, per device (a device without a shaper is
    not named): the switch's ports are the hosts' downlinks, and one host's losses can hold up
    every other (docs/issue10/HISTORY.md, *One blob at a time at 25 Mbit/s*)."""
    try:
        qdiscs = json.loads(tc_json) if tc_json.strip() else []
    except json.JSONDecodeError as exc:
        raise UnreadableCounters(f"tc's JSON unreadable: {exc}") from None
    if not isinstance(qdiscs, list):
        raise UnreadableCounters("tc's JSON is not a list of qdiscs")
    drops: dict[str, int] = {}
    for qdisc in qdiscs:
        if not isinstance(qdisc, dict) or qdisc.get("kind") != "tbf":
            continue
        count = qdisc.get("drops", 0)
        if type(count) is not int or count < 0:
            raise UnreadableCounters(f"a tbf's drops are {count!r}")
        device = str(qdisc.get("dev", ""))
        drops[device] = drops.get(device, 0) + count
    return drops
