"""Clients that read at a rate (`--client-read`): a blob counts when read, not when held.

No wall-clock time is asserted: only the simulated clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.simulate.cli import simulate
from bench.simulate.clients import _Reading
from bench.simulate.fetch import BlobState
from bench.simulate.image import plain_layer_sizes
from bench.simulate.world import SimConfig, Simulation
from pieces.layout import PieceLayout

MiB = 2**20
SMALL = tuple(plain_layer_sizes(48 * MiB, 3))


def test_a_reading_goes_as_far_as_the_pieces_held_in_order() -> None:
    layout = PieceLayout(10 * MiB, 4 * MiB)  # pieces of 4, 4 and 2 MiB
    state = BlobState("sha256:" + "0" * 64, layout)
    reading = _Reading(state)
    assert reading.readable() == 0 and reading.waiting()
    state.have |= {0, 2}
    assert reading.readable() == 4 * MiB  # piece 1 is missing: the node waits there
    reading.position = 4 * MiB
    assert reading.waiting() and not reading.done()
    state.have.add(1)
    assert reading.readable() == 10 * MiB and not reading.waiting()
    reading.position = 10 * MiB
    assert reading.done()


@pytest.mark.parametrize("parallel", [1, 6])
def test_slow_readers_take_the_image_over_their_rate_shared_by_their_blobs(parallel: int) -> None:
    rate = 2e6  # far below the links (100 Mbit/s): the reading ends every pull
    config = SimConfig(nodes=3, layer_sizes=SMALL, parallel=parallel, client_read=rate)
    result = Simulation(config).run()
    assert result.stop == "done"
    reading_s = config.image_bytes() / rate
    for done in result.done.values():
        assert done is not None
        # Blobs read at once share the rate: six at a time take as long as one at a time.
        assert reading_s <= done <= reading_s + 5 * config.bound()


def test_fast_readers_finish_just_after_their_node_holds_the_image() -> None:
    rate = 1e9
    config = SimConfig(nodes=4, layer_sizes=SMALL, client_read=rate)
    simulation = Simulation(config)
    held_all: dict[str, float] = {}

    def watch(node_name: str, states: list[BlobState]) -> None:
        def piece() -> None:
            if all(s.complete for s in states) and node_name not in held_all:
                held_all[node_name] = simulation.queue.now

        for state in states:
            state.watchers.append(piece)

    for node in simulation.nodes:
        watch(node.name, [node.state(b.digest) for b in simulation.blobs])
    result = simulation.run()
    assert result.stop == "done" and set(held_all) == set(result.done)
    for name, done in result.done.items():
        assert done is not None
        # Nothing is read before the node holds it, and a waiting reader goes on at once.
        assert held_all[name] <= done <= held_all[name] + config.image_bytes() / rate


def test_the_cli_takes_a_read_rate_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["--nodes", "2", "--size", "16MiB", "--layers", "2", "--client-read", "4MB/s"]
    result = CliRunner().invoke(simulate, [*args, "--quiet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "clients read 4 MB/s" in result.output
    doc = json.loads(out.read_text())
    assert doc["client_read_bytes_per_s"] == 4_000_000
    assert doc["results"][0]["last_done_s"] >= doc["image_bytes"] / 4e6
    refused = CliRunner().invoke(simulate, ["--client-read", "fast"])
    assert refused.exit_code != 0 and "--client-read" in refused.output
