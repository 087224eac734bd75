"""`pollen configure` on files under a test root: a diff without changes, the change, no
second change, the original kept once, and --undo putting back every byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from peer.configure.command import configure

ENDPOINT = "http://127.0.0.1:65001"
CONTAINERD = 'version = 2\n# the operator\'s\n[grpc]\n  address = "/run/x.sock"\n'


def _run(root: Path, *args: str) -> str:
    result = CliRunner().invoke(configure, [*args, "--root", str(root)])
    assert result.exit_code == 0, result.output
    return result.output


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    config = tmp_path / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONTAINERD)
    config.chmod(0o600)
    (tmp_path / "etc/docker").mkdir(parents=True)
    (tmp_path / "etc/docker/daemon.json").write_text('{"debug": true}\n')
    return tmp_path


def test_dry_run_shows_a_diff_and_changes_nothing(root: Path) -> None:
    before = _files(root)
    out = _run(root, "containerd", "--registry", "quay.io", "--dry-run")
    assert "+++ " + str(root / "etc/containerd/certs.d/quay.io/hosts.toml") in out
    assert '+config_path = "/etc/containerd/certs.d"' in out
    assert "2 file(s) would change, none did" in out
    assert _files(root) == before


def test_configure_twice_changes_once_and_undo_puts_every_byte_back(root: Path) -> None:
    before = _files(root)
    _run(root, "containerd", "--registry", "docker.io", "--registry", "quay.io")
    config = root / "etc/containerd/config.toml"
    hosts = root / "etc/containerd/certs.d/docker.io/hosts.toml"
    assert hosts.exists() and "config_path" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # the original's mode kept
    once = _files(root)
    out = _run(root, "containerd", "--registry", "docker.io", "--registry", "quay.io")
    assert out.count("already configured") == 3
    assert _files(root) == once
    # Another change later (another registry): the backup is still the operator's original.
    _run(root, "containerd", "--registry", "ghcr.io", "--endpoint", "http://10.0.0.1:65001")
    assert (root / "etc/containerd/config.toml.pollen-backup").read_text() == CONTAINERD
    _run(root, "containerd", "--undo")
    assert _files(root) == before
    assert not (root / "etc/containerd/certs.d/docker.io/hosts.toml").exists()
    assert "nothing to undo" in _run(root, "containerd", "--undo")


def test_undo_of_a_file_pollen_created_removes_it(root: Path) -> None:
    _run(root, "k3s", "--all-registries")
    path = root / "etc/rancher/k3s/registries.yaml"
    assert "'*':" in path.read_text()
    _run(root, "k3s", "--undo")
    assert not path.exists()


def test_a_symlinked_config_stays_a_symlink(root: Path) -> None:
    real = root / "etc/docker/real.json"
    link = root / "etc/docker/daemon.json"
    link.rename(real)
    link.symlink_to(real.name)
    _run(root, "docker")
    assert link.is_symlink() and ENDPOINT in real.read_text()
    _run(root, "docker", "--undo")
    assert link.is_symlink() and real.read_text() == '{"debug": true}\n'


@pytest.mark.parametrize(
    "args",
    [
        ["containerd", "--registry", "../../etc/shadow"],
        ["containerd", "--registry", "docker.io/evil"],
        ["containerd", "--endpoint", "127.0.0.1:65001"],
        ["docker", "--registry", "quay.io"],
        ["docker", "--all-registries"],
        ["podman", "--registry", "docker.io", "--registry", "quay.io"],
        ["crio", "--all-registries"],
    ],
)
def test_requests_no_runtime_file_could_carry_are_refused(root: Path, args: list[str]) -> None:
    before = _files(root)
    result = CliRunner().invoke(configure, [*args, "--root", str(root)])
    assert result.exit_code != 0 and "Error:" in result.output
    assert _files(root) == before


def test_containerd_without_a_config_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(configure, ["containerd", "--root", str(tmp_path)])
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("runtime", ["containerd", "docker", "podman", "k3s"])
def test_if_installed_leaves_a_host_without_the_runtime_alone(tmp_path: Path, runtime: str) -> None:
    """The DaemonSet's init container on a node that runs another runtime."""
    (tmp_path / "etc/containerd").mkdir(parents=True)  # hostPath DirectoryOrCreate made it
    result = CliRunner().invoke(configure, [runtime, "--if-installed", "--root", str(tmp_path)])
    assert result.exit_code == 0 and "not installed here" in result.output
    assert [p.name for p in (tmp_path / "etc").iterdir()] == ["containerd"]
    assert not any((tmp_path / "etc/containerd").iterdir())


def test_if_installed_configures_a_host_with_the_runtime(root: Path) -> None:
    out = _run(root, "containerd", "--if-installed")
    assert "not installed" not in out
    assert (root / "etc/containerd/certs.d/docker.io/hosts.toml").exists()


def test_podman_drop_in_never_touches_registries_conf(root: Path) -> None:
    main = root / "etc/containers/registries.conf"
    main.parent.mkdir(parents=True)
    main.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n')
    os.utime(main, (1, 1))
    _run(root, "podman")
    assert main.stat().st_mtime == 1
    drop_in = root / "etc/containers/registries.conf.d/99-pollen.conf"
    assert 'location = "127.0.0.1:65001"' in drop_in.read_text()
    _run(root, "podman", "--undo")
    assert not drop_in.exists()


def test_undo_refuses_to_throw_away_what_the_operator_changed_since(root: Path) -> None:
    daemon = root / "etc/docker/daemon.json"
    _run(root, "docker")
    daemon.write_text(daemon.read_text().replace('"debug": true', '"debug": false'))
    result = CliRunner().invoke(configure, ["docker", "--undo", "--root", str(root)])
    assert result.exit_code != 0 and "changed since" in result.output
    assert '"debug": false' in daemon.read_text()  # nothing lost
    _run(root, "docker", "--undo", "--force")  # the operator says so: the original is back
    assert daemon.read_text() == '{"debug": true}\n'


def test_an_absolute_symlink_is_followed_inside_the_root(root: Path, tmp_path: Path) -> None:
    """An init container sees the host's / at --root: a host symlink to /opt/... means
    <root>/opt/..., never the container's own /opt."""
    real = root / "opt/docker/daemon.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"debug": true}\n')
    link = root / "etc/docker/daemon.json"
    link.unlink()
    link.symlink_to("/opt/docker/daemon.json")
    _run(root, "docker")
    assert ENDPOINT in real.read_text() and link.is_symlink()
    assert not Path("/opt/docker/daemon.json").exists()


def test_a_symlink_out_of_the_root_is_refused(root: Path) -> None:
    link = root / "etc/docker/daemon.json"
    link.unlink()
    link.symlink_to("../../../../../../../../../../tmp/outside-the-root.json")
    result = CliRunner().invoke(configure, ["docker", "--root", str(root)])
    assert result.exit_code != 0 and "outside" in result.output
    assert not Path("/tmp/outside-the-root.json").exists()


def test_containerds_host_port_directory_form_is_used_when_present(root: Path) -> None:
    operator = root / "etc/containerd/certs.d/r.example_5000_"
    operator.mkdir(parents=True)
    (operator / "hosts.toml").write_text('server = "https://r.example:5000"\n')
    _run(root, "containerd", "--registry", "r.example:5000")
    assert ENDPOINT in (operator / "hosts.toml").read_text()
    assert not (root / "etc/containerd/certs.d/r.example:5000").exists()


def test_a_directory_of_legacy_certificates_is_not_shadowed(root: Path) -> None:
    """containerd reads ca.crt and client certs of a directory without hosts.toml; a
    hosts.toml written there would turn that off and break the registry's TLS."""
    certs = root / "etc/containerd/certs.d/r.example"
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_text("---")
    result = CliRunner().invoke(
        configure, ["containerd", "--registry", "r.example", "--root", str(root)]
    )
    assert result.exit_code != 0 and "ca.crt" in result.output
    assert not (certs / "hosts.toml").exists()
