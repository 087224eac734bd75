"""`--timeline`: how far the hosts are behind the registry, looked at while a run goes.

No wall-clock time is asserted: only what the simulated clock and the counters say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.simulate.cli import simulate
from bench.simulate.image import plain_layer_sizes
from bench.simulate.timeline import Timeline, stored_bytes
from bench.simulate.world import MBIT, Kill, SimConfig, Simulation

MiB = 2**20
# 3 layers whose last pieces are short (the sizes are not multiples of a piece), and a config.
SMALL = tuple(plain_layer_sizes(40 * MiB + 12345, 3))


def test_looking_changes_nothing_in_the_run() -> None:
    config = SimConfig(nodes=8, layer_sizes=SMALL, seed=3)
    plain = Simulation(config).run()
    watched = Simulation(config)
    timeline = Timeline(watched, 0.25)
    result = watched.run()
    assert result.done == plain.done
    assert result.origin_bytes == plain.origin_bytes
    assert result.stats == plain.stats
    assert len(timeline.samples) >= 4  # the run lasted a few periods


def test_the_samples_follow_the_run_and_no_host_is_ahead_of_the_registry() -> None:
    config = SimConfig(nodes=8, layer_sizes=SMALL, seed=1)
    sim = Simulation(config)
    timeline = Timeline(sim, 0.5)
    result = sim.run()
    samples = timeline.samples
    assert [s.at for s in samples] == [0.5 * (i + 1) for i in range(len(samples))]
    # The looks stop with the run: the last one is the last period it reached.
    assert samples[-1].at <= result.simulated_s < samples[-1].at + 0.5
    sent = [s.origin_bytes for s in samples]
    assert sent == sorted(sent) and sent[-1] == config.image_bytes()
    done = [s.hosts_done for s in samples]
    assert done == sorted(done)
    for s in samples:
        assert s.hosts_done + s.hosts_left == config.nodes
        # Every byte a host stores left the registry first; the first look finds the
        # registry's first bytes, not yet at every host.
        if s.behind is not None:
            low, median, p90, high = s.behind
            assert 0 <= low <= median <= p90 <= high <= s.origin_bytes
        assert s.received_share is not None and s.received_share >= 0
    assert samples[0].behind is not None and samples[0].behind[-1] > 0
    # Every host stored the whole image, short last pieces counted as they are.
    assert all(stored_bytes(node) == config.image_bytes() for node in sim.nodes)


def test_unshaped_downlinks_have_no_busy_share_and_the_dead_are_not_counted() -> None:
    config = SimConfig(
        nodes=8, layer_sizes=SMALL, downlink=None, kills=(Kill(at=0.6, count=2),), seed=2
    )
    sim = Simulation(config)
    timeline = Timeline(sim, 0.5)
    result = sim.run()
    assert len(result.killed) == 2
    assert all(s.received_share is None for s in timeline.samples)
    later = [s for s in timeline.samples if s.at > 0.6]
    assert later and all(s.hosts_done + s.hosts_left == 6 for s in later)


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Timeline(Simulation(SimConfig(nodes=2, layer_sizes=SMALL)), 0)


def test_the_cli_prints_the_timeline_and_writes_it_to_the_json(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--nodes", "4", "--size", "24MiB", "--uplink", f"{100 * MBIT * 8 // 10**6}mbit"]
    result = CliRunner().invoke(
        simulate, [*args, "--timeline", "0.5", "--json", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "behind the registry" in result.output
    doc = json.loads(out.read_text())
    assert doc["timeline"] and doc["timeline"][0]["at"] == 0.5
    assert set(doc["timeline"][0]) == {
        "at",
        "origin_bytes",
        "hosts_done",
        "hosts_left",
        "behind",
        "received_share",
    }
    refused = CliRunner().invoke(simulate, [*args, "--timeline", "0"])
    assert refused.exit_code != 0 and "--timeline" in refused.output
    plain = CliRunner().invoke(simulate, [*args, "--json", str(out), "--quiet"])
    assert plain.exit_code == 0 and "timeline" not in json.loads(out.read_text())
