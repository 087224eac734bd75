"""The testbed's link timeline: rates from counter samples, the table, the sampler thread."""

from __future__ import annotations

import threading

import pytest

from bench.link_timeline import (
    Counters,
    LinkSampler,
    timeline_rows,
    timeline_table,
    without_short_tail,
)


def test_rows_are_the_rates_between_samples() -> None:
    samples: list[tuple[float, Counters]] = [
        (0.0, {"origin": (0, 0, 0), "node1": (0, 0, 0), "node2": (0, 0, 0)}),
        (0.5, {"origin": (500, 0, 0), "node1": (100, 300, 3), "node2": (0, 200, 0)}),
        (1.5, {"origin": (1500, 0, 0), "node1": (100, 1300, 3), "node2": (50, 200, 5)}),
    ]
    rows = timeline_rows(samples, "origin", ["node1", "node2"])
    assert rows == [
        {
            "from_s": 0.0,
            "to_s": 0.5,
            "origin_up_bytes_per_s": 1000,
            "down_bytes_per_s": {"node1": 600, "node2": 400},
            "up_bytes_per_s": {"node1": 200, "node2": 0},
            "down_drops_per_s": {"node1": 6.0, "node2": 0.0},
        },
        {
            "from_s": 0.5,
            "to_s": 1.5,
            "origin_up_bytes_per_s": 1000,
            "down_bytes_per_s": {"node1": 1000, "node2": 0},
            "up_bytes_per_s": {"node1": 0, "node2": 50},
            "down_drops_per_s": {"node1": 0.0, "node2": 5.0},
        },
    ]


def test_rows_count_from_the_shifted_start() -> None:
    samples: list[tuple[float, Counters]] = [
        (0.0, {"origin": (0, 0, 0), "node1": (0, 0, 0)}),
        (1.0, {"origin": (10, 0, 0), "node1": (0, 10, 0)}),
    ]
    (row,) = timeline_rows(samples, "origin", ["node1"], shift=0.25)
    assert (row["from_s"], row["to_s"], row["origin_up_bytes_per_s"]) == (-0.25, 0.75, 10)


def test_two_samples_at_one_moment_make_no_row() -> None:
    counters: Counters = {"origin": (0, 0, 0), "node1": (0, 0, 0)}
    assert timeline_rows([(1.0, counters), (1.0, counters)], "origin", ["node1"]) == []


def test_the_table_gives_busy_shares_of_the_shaped_rates_and_the_hosts_done() -> None:
    rows = [
        {
            "from_s": 0.0,
            "to_s": 1.0,
            "origin_up_bytes_per_s": 900,
            "down_bytes_per_s": {"node1": 250, "node2": 1000, "node3": 500},
            "up_bytes_per_s": {"node1": 2_000_000, "node2": 0, "node3": 0},
            "down_drops_per_s": {"node1": 0.0, "node2": 97.0, "node3": 4.5},
        }
    ]
    text = timeline_table(rows, {"node1": 0.8, "node2": None, "node3": 1.2}, 1000, 1000)
    line = text.splitlines()[-1]
    assert line.split() == ["0.0-", "1.0s", "90", "%", "25", "%", "50", "%", "100", "%", "0.0",
                            "MB/s", "node2", "97/s", "1"]  # fmt: skip
    # No drops (or a timeline from before they were read): a dash.
    del rows[0]["down_drops_per_s"]
    assert timeline_table(rows, {}, 1000, 1000).splitlines()[-1].split()[-2] == "-"
    unshaped = timeline_table(rows, {}, 1000, None).splitlines()[-1]
    assert "0.0 MB/s" in unshaped and "%" in unshaped  # the origin is always shaped


def test_the_sampler_reads_at_start_every_period_and_at_stop() -> None:
    reads = 0
    enough = threading.Event()

    def read() -> Counters:
        nonlocal reads
        reads += 1
        if reads >= 4:
            enough.set()
        return {"origin": (reads, 0, 0)}

    sampler = LinkSampler(read, 0.01)
    sampler.start()
    assert enough.wait(5)
    samples = sampler.stop()
    values = [counters["origin"][0] for _, counters in samples]
    # Every read, in order (the one before the last may be merged away), the last at stop.
    assert values[0] == 1 and values[-1] == reads and len(values) >= reads - 1
    assert values == sorted(set(values))
    times = [t for t, _ in samples]
    assert times[0] < 0.01 and times == sorted(times)
    assert sampler.error is None


def test_a_short_last_interval_is_merged_into_the_one_before() -> None:
    counters: Counters = {"origin": (0, 0, 0)}
    samples = [(0.0, counters), (1.0, counters), (2.0, counters), (2.3, counters)]
    assert without_short_tail(samples, 1.0) == [samples[0], samples[1], samples[3]]
    assert without_short_tail(samples[:3], 1.0) == samples[:3]  # 1 s: a whole period
    assert without_short_tail(samples[2:], 1.0) == samples[2:]  # nothing before to take it


def test_a_read_that_fails_leaves_no_timeline_and_says_why() -> None:
    calls = 0
    failed = threading.Event()

    def read() -> Counters:
        nonlocal calls
        calls += 1
        if calls > 1:
            failed.set()
            raise RuntimeError("the switch is gone")
        return {}

    sampler = LinkSampler(read, 0.01)
    sampler.start()
    assert failed.wait(5)
    assert sampler.stop() == []
    assert isinstance(sampler.error, RuntimeError) and calls == 2  # not read again at stop


def test_a_first_read_that_fails_starts_no_thread() -> None:
    def read() -> Counters:
        raise RuntimeError("no switch")

    sampler = LinkSampler(read, 0.01)
    sampler.start()
    assert sampler.stop() == [] and isinstance(sampler.error, RuntimeError)


def test_the_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        LinkSampler(dict, 0)
