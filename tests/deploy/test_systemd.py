"""deploy/systemd: the unit passes `systemd-analyze verify` (systemd's own reading of it, with
only the binary's path pointed at one that exists here), keeps the hardening a review asks
for, and the example config.toml is one `pollen run` accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from peer.cli import _node_config, run
from peer.config import parse_address

DEPLOY = Path(__file__).parents[2] / "deploy" / "systemd"


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is part of Debian's systemd package"
    pollen = shutil.which("pollen") or str(Path(__file__).parents[2] / ".venv/bin/pollen")
    unit = (DEPLOY / "pollen.service").read_text()
    assert "ExecStart=/usr/local/bin/pollen " in unit
    (tmp_path / "pollen.service").write_text(
        unit.replace("ExecStart=/usr/local/bin/pollen ", f"ExecStart={pollen} ")
    )
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "pollen.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr  # no warning either


def test_the_unit_is_a_hardened_notify_service() -> None:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "pollen.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected: dict[str, list[str]] = {
        "Type": ["notify"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
        "Restart": ["on-failure"],
        "After": ["network-online.target"],
        "CacheDirectory": ["pollen"],
        "StateDirectory": ["pollen"],
    }
    for key, values in expected.items():
        assert settings.get(key) == values, key
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "containerd.service" in settings["Before"][0].split()
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "WatchdogSec" in settings
    # Under DynamicUser the node's user cannot read a root-only token file: a credential.
    assert settings["LoadCredential"] == ["cluster.token:/etc/pollen/cluster.token"]
    assert "--cluster-token-file ${CREDENTIALS_DIRECTORY}/cluster.token" in settings["ExecStart"][0]
    assert "--admin-token-file ${STATE_DIRECTORY}/admin.token" in settings["ExecStart"][0]


def test_the_example_config_is_accepted(tmp_path: Path) -> None:
    token = tmp_path / "cluster.token"
    token.write_text("x" * 40 + "\n")
    args = ["--config", str(DEPLOY / "config.toml"), "--cluster-token-file", str(token)]
    with run.make_context("run", args) as ctx:
        config = _node_config(dict(ctx.params))
    assert config.http == parse_address("127.0.0.1:65001")
    assert config.peer == parse_address("0.0.0.0:65002")
    assert config.cluster_token == b"x" * 40
    assert config.default_upstream == "https://registry-1.docker.io"


def test_a_config_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('cache_sise = "1GiB"\n')
    with pytest.raises(click.BadParameter, match="unknown setting 'cache_sise'"):
        run.make_context("run", ["--config", str(bad)])
