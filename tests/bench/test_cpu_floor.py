"""The CPU floor benchmark measures every step on real bytes and adds them up as it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cpu_floor import main, measure, receive_seconds, serve_seconds, write_random_file

SIZE = 4 * 1024 * 1024
STEPS = ("verify", "receive", "serve", "store_reused_pages", "store_new_pages")


def test_every_step_is_measured_and_the_floors_are_their_sums(tmp_path: Path) -> None:
    result = measure(tmp_path, SIZE, pause=0.0)
    for step in STEPS:
        assert result[step] > 0, step
    design = result["receive"] + result["verify"] + result["serve"]
    assert result["cold_floor"] == pytest.approx(design + result["store_reused_pages"])
    assert result["cold_floor_new_pages"] == pytest.approx(design + result["store_new_pages"])
    assert result["swarm_floor"] == pytest.approx(result["cold_floor"] + result["serve"])
    assert result["cold_floor_any_design"] == pytest.approx(
        result["verify"] + min(result["receive"], result["store_reused_pages"]) + result["serve"]
    )
    assert result["cold_floor_any_design"] <= result["cold_floor"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_the_transfers_move_the_whole_file_through_another_process(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    write_random_file(source, SIZE + 12345)  # not a multiple of any buffer
    assert receive_seconds(source) > 0  # raises unless every byte arrived
    assert serve_seconds(source) > 0  # raises unless the reading process ended well


def test_the_command_reports_each_step_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    result = CliRunner().invoke(
        main,
        [
            "--size",
            "2MiB",
            "--repeat",
            "2",
            "--pause",
            "0",
            "--dir",
            str(tmp_path),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for label in ("verify (sha256)", "floor, cold path, any design", "the target 1.0"):
        assert label in result.output
    written = json.loads(out.read_text())
    assert written["size"] == 2 * 1024 * 1024
    assert len(written["runs"]) == 2
    assert set(STEPS) <= set(written["median"])


def test_a_size_below_one_buffer_is_refused() -> None:
    result = CliRunner().invoke(main, ["--size", "1KiB", "--pause", "0"])
    assert result.exit_code == 2
    assert "--size" in result.output
