"""The picker's cost benchmark: the download it drives finishes, and the command reports each
piece count."""

from __future__ import annotations

from click.testing import CliRunner

from bench.picker_cost import main, run_once


def test_the_driven_download_finishes_and_schedules_at_least_once_per_piece() -> None:
    spent, schedules = run_once(64, 4, seed=3)  # raises if the download never finishes
    assert spent > 0
    assert schedules >= 64  # a schedule for every piece answered, and the first one


def test_the_command_reports_every_piece_count() -> None:
    result = CliRunner().invoke(main, ["--pieces", "32,64", "--peers", "3", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert [row[0] for row in rows] == ["32", "64"]
    assert all(float(row[1]) > 0 for row in rows)
