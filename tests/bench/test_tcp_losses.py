"""The testbed's loss counters: /proc/net/snmp and `tc -s -j` read, summed and subtracted."""

from __future__ import annotations

import json

import pytest

from bench.tcp_losses import (
    Losses,
    UnreadableCounters,
    qdisc_drops,
    qdisc_drops_by_device,
    tcp_segments,
)

SNMP = (
    "Ip: Forwarding DefaultTTL InReceives\n"
    "Ip: 1 64 123\n"
    "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets "
    "CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n"
    "Tcp: 1 200 120000 -1 77654 66050 11514 3477 0 10213928 10162074 32161 0 14766 0\n"
    "Udp: InDatagrams NoPorts\n"
    "Udp: 5 6\n"
)


def test_tcp_segments_are_read_by_name() -> None:
    assert tcp_segments(SNMP) == (10162074, 32161)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Ip: Forwarding\nIp: 1\n",
        "Tcp: OutSegs RetransSegs\n",  # names without values
        "Tcp: OutSegs RetransSegs\nTcp: 5\n",  # fewer values than names
        "Tcp: InSegs OutSegs\nTcp: 1 2\n",  # no RetransSegs
        "Tcp: OutSegs RetransSegs\nTcp: 5 x\n",
    ],
)
def test_unreadable_snmp_is_an_error_not_zero(text: str) -> None:
    with pytest.raises(UnreadableCounters):
        tcp_segments(text)


def test_qdisc_drops_sum_the_shapers_only() -> None:
    tc = json.dumps(
        [
            {"kind": "noqueue", "dev": "lo", "drops": 0},
            {"kind": "tbf", "dev": "v1b", "drops": 425, "packets": 173978},
            {"kind": "tbf", "dev": "v2b", "drops": 647},
            # --rtt/--loss: netem above a tbf counts the tbf's drops again, and its own losses
            {"kind": "netem", "dev": "eth0", "drops": 1072 + 99},
            {"kind": "tbf", "dev": "v3b"},  # no drops field: none counted
        ]
    )
    assert qdisc_drops(tc) == 425 + 647
    # per device, as the timeline reads the switch's ports (each a host's downlink)
    assert qdisc_drops_by_device(tc) == {"v1b": 425, "v2b": 647, "v3b": 0}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"drops": 3}',
        '[{"kind": "tbf", "drops": null}]',
        '[{"kind": "tbf", "drops": -1}]',
    ],
)
def test_unreadable_qdiscs_are_an_error(text: str) -> None:
    with pytest.raises(UnreadableCounters):
        qdisc_drops(text)


def test_no_qdisc_is_no_drop() -> None:
    assert qdisc_drops("") == 0
    assert qdisc_drops("[]\n") == 0


def test_losses_add_subtract_and_share() -> None:
    before = Losses(segments=1000, retransmitted=10, uplink_drops=1, downlink_drops=2)
    after = before + Losses(segments=900, retransmitted=100, uplink_drops=30, downlink_drops=4)
    run = after - before
    assert run == Losses(900, 100, 30, 4)
    assert run.retransmitted_share == pytest.approx(0.1)  # of the 1,000 segments sent
    assert run.as_dict()["tcp_retransmitted_share"] == 0.1
    assert "10.0 % of the 1,000 segments sent" in run.describe()
    assert "30 (GSO) packets at the uplinks, 4 at the downlinks" in run.describe()
    assert Losses().retransmitted_share == 0.0
