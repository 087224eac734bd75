"""`--prefetch/--no-prefetch` and `--prefetch-downloads` reach the node's config, from a flag,
the environment or the config file."""

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
