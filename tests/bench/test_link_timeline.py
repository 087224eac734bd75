"""The testbed's link timeline: rates from counter samples, the table, the sampler thread."""

from __future__ import annotations

import threading

import pytest

from bench.link_timeline import Counters, LinkSampler, timeline_rows, timeline_table


def test_rows_are_the_rates_between_samples() -> None:
    samples: list[tuple[float, Counters]] = [
        (0.0, {"origin": (0, 0), "node1": (0, 0), "node2": (0, 0)}),
        (0.5, {"origin": (500, 0), "node1": (100, 300), "node2": (0, 200)}),
        (1.5, {"origin": (1500, 0), "node1": (100, 1300), "node2": (50, 200)}),
    ]
    rows = timeline_rows(samples, "origin", ["node1", "node2"])
    assert rows == [
        {
            "from_s": 0.0,
            "to_s": 0.5,
            "origin_up_bytes_per_s": 1000,
            "down_bytes_per_s": {"node1": 600, "node2": 400},
            "up_bytes_per_s": {"node1": 200, "node2": 0},
        },
        {
            "from_s": 0.5,
            "to_s": 1.5,
            "origin_up_bytes_per_s": 1000,
            "down_bytes_per_s": {"node1": 1000, "node2": 0},
            "up_bytes_per_s": {"node1": 0, "node2": 50},
        },
    ]


def test_two_samples_at_one_moment_make_no_row() -> None:
    counters: Counters = {"origin": (0, 0), "node1": (0, 0)}
    assert timeline_rows([(1.0, counters), (1.0, counters)], "origin", ["node1"]) == []


def test_the_table_gives_busy_shares_of_the_shaped_rates_and_the_hosts_done() -> None:
    rows = [
        {
            "from_s": 0.0,
            "to_s": 1.0,
            "origin_up_bytes_per_s": 900,
            "down_bytes_per_s": {"node1": 250, "node2": 1000, "node3": 500},
            "up_bytes_per_s": {"node1": 2_000_000, "node2": 0, "node3": 0},
        }
    ]
    text = timeline_table(rows, {"node1": 0.8, "node2": None, "node3": 1.2}, 1000, 1000)
    line = text.splitlines()[-1]
    assert line.split() == ["0.0-", "1.0s", "90", "%", "25", "%", "50", "%", "100", "%", "0.0",
                            "MB/s", "1"]  # fmt: skip
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
        return {"origin": (reads, 0)}

    sampler = LinkSampler(read, 0.01)
    sampler.start()
    assert enough.wait(5)
    samples = sampler.stop()
    assert [counters["origin"][0] for _, counters in samples] == list(range(1, reads + 1))
    times = [t for t, _ in samples]
    assert times[0] == 0.0 and times == sorted(times)


def test_a_read_that_fails_in_the_thread_is_raised_by_stop() -> None:
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
    with pytest.raises(RuntimeError, match="the switch is gone"):
        sampler.stop()


def test_the_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        LinkSampler(dict, 0)
