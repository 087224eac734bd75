"""`pollen run`'s options reach the node's config (from a flag, the environment or the config
file), or are refused with the option named before anything starts."""

from __future__ import annotations

from pathlib import Path

import click.testing
import pytest

from peer.cli import main
from peer.config import NodeConfig


class _Stop(ValueError):
    pass


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    """The configs `pollen run` would start a node with (it stops before opening a store)."""
    configs: list[NodeConfig] = []

    def fake_node(config: NodeConfig, *_reload: object) -> None:
        configs.append(config)
        raise _Stop("stopped by the test")

    monkeypatch.setattr("peer.node.Node", fake_node)
    return configs


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    base = ["run", "--data-dir", str(tmp_path), "--peer", "127.0.0.1:0"]
    return click.testing.CliRunner().invoke(main, [*base, *args], env=env)


def test_prefetch_is_on_by_default_and_off_with_the_flag(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    _run(tmp_path)
    _run(tmp_path, "--no-prefetch", "--prefetch-downloads", "9")
    _run(tmp_path, env={"POLLEN_PREFETCH": "false"})
    config_file = tmp_path / "pollen.toml"
    config_file.write_text("prefetch = false\nprefetch-downloads = 2\n")
    _run(tmp_path, "--config", str(config_file))
    _run(tmp_path, "--config", str(config_file), "--prefetch")
    assert [(c.prefetch, c.prefetch_downloads) for c in started] == [
        (True, 4),
        (False, 9),
        (False, 4),
        (False, 2),
        (True, 2),
    ]


def test_prefetch_downloads_below_one_is_refused(tmp_path: Path, started: list[NodeConfig]) -> None:
    result = _run(tmp_path, "--prefetch-downloads", "0")
    assert result.exit_code == 2
    assert "--prefetch-downloads" in result.output
    assert not started
    with pytest.raises(ValueError, match="at least 1"):
        NodeConfig(data_dir=tmp_path, prefetch_downloads=0).check()


def test_the_help_explains_prefetch() -> None:
    result = click.testing.CliRunner().invoke(main, ["run", "--help"])
    assert "--prefetch / --no-prefetch" in result.output
    assert "--prefetch-downloads" in result.output


def test_piece_sizes_a_peer_can_carry_are_taken(tmp_path: Path, started: list[NodeConfig]) -> None:
    for size in ("128KiB", "3MiB", "16MiB"):
        result = _run(tmp_path, "--piece-size", size)
        assert "stopped by the test" in result.output
    assert [c.piece_size for c in started] == [128 * 1024, 3 * 1024 * 1024, 16 * 1024 * 1024]


# --piece-size: over 16 MiB a piece does not fit the peer protocol's largest frame (every
# peer would refuse every piece of ours); under 64 KiB a blob over 64 GiB would need more
# pieces than a node keeps state for. --pieces-per-blob: at least one piece.
@pytest.mark.parametrize(
    ("option", "value"),
    [("--piece-size", v) for v in ("32MiB", "16MiB1", "4096", "32KiB")]
    + [("--pieces-per-blob", v) for v in ("0", "-1", "65537", "many")],
)
def test_a_piece_setting_out_of_range_is_refused(
    tmp_path: Path, started: list[NodeConfig], option: str, value: str
) -> None:
    result = _run(tmp_path, option, value)
    assert result.exit_code == 2
    assert option in result.output
    assert not started


def test_a_piece_size_out_of_range_in_the_config_file_is_refused(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    config_file = tmp_path / "pollen.toml"
    config_file.write_text('piece-size = "64MiB"\n')
    result = _run(tmp_path, "--config", str(config_file))
    assert result.exit_code == 2
    assert "piece-size" in result.output
    assert not started


def test_the_minimum_read_rate_may_be_off_but_not_off_by_rounding(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    for rate in ("0", "0KiB/s", "64KiB/s"):
        assert "stopped by the test" in _run(tmp_path, "--min-read-rate", rate).output
    assert [c.min_read_rate for c in started] == [0, 0, 64 * 1024]
    result = _run(tmp_path, "--min-read-rate", "1bit")  # 0 bytes/s: not taken as off
    assert result.exit_code == 2 and "--min-read-rate" in result.output
    assert len(started) == 3


def test_the_peer_links_congestion_control_is_chosen_or_refused_at_start(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    _run(tmp_path)
    _run(tmp_path, "--peer-congestion-control", "reno")
    _run(tmp_path, env={"POLLEN_PEER_CONGESTION_CONTROL": "system"})
    config_file = tmp_path / "pollen.toml"
    config_file.write_text('peer-congestion-control = "reno"\n')
    _run(tmp_path, "--config", str(config_file))
    assert [c.peer_congestion_control for c in started] == [None, "reno", "system", "reno"]
    for refused in ("nosuchalgo", "cubic\0bbr"):  # unknown; a name the kernel would cut
        result = _run(tmp_path, "--peer-congestion-control", refused)
        assert result.exit_code == 2
        assert "--peer-congestion-control" in result.output
        assert "Allowed to any process" in result.output
    assert len(started) == 4


def test_the_help_explains_the_congestion_control() -> None:
    result = click.testing.CliRunner().invoke(main, ["run", "--help"])
    text = " ".join(result.output.split())  # as wrapped for the terminal
    assert "--peer-congestion-control NAME" in text
    assert "'system' for the host's default" in text
    default = "[default: (cubic where this process may set it; else the host's)]"
    assert default in text


def test_pieces_per_blob_reaches_the_config(tmp_path: Path, started: list[NodeConfig]) -> None:
    _run(tmp_path)
    _run(tmp_path, "--pieces-per-blob", "32")
    _run(tmp_path, env={"POLLEN_PIECES_PER_BLOB": "16"})
    config_file = tmp_path / "pollen.toml"
    config_file.write_text("pieces-per-blob = 8\n")
    _run(tmp_path, "--config", str(config_file))
    assert [c.pieces_per_blob for c in started] == [256, 32, 16, 8]


def test_client_registries_are_on_by_default_and_off_by_flag_env_or_file(
    tmp_path: Path, started: list[NodeConfig]
) -> None:
    _run(tmp_path)
    _run(tmp_path, "--no-client-registries")
    _run(tmp_path, env={"POLLEN_CLIENT_REGISTRIES": "false"})
    config_file = tmp_path / "pollen.toml"
    config_file.write_text("client-registries = false\n")
    _run(tmp_path, "--config", str(config_file))
    assert [c.client_registries for c in started] == [True, False, False, False]
    help_text = click.testing.CliRunner().invoke(main, ["run", "--help"]).output
    assert "--client-registries / --no-client-registries" in help_text
