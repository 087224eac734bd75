"""`pollen configure` with the real runtimes: each reads the files it wrote and pulls through
a real node from a real docker-registry (the registry's log shows each blob left once, to the
node; the node's counters show it served every byte).

containerd: `containerd config dump` shows the config_path that configure set (Debian's
config.toml and a version 1 layout), then `ctr` pulls with that directory. dockerd and podman
have no other way to the registry (no network here), so a finished pull went through the node.
podman reads /etc/containers only: it runs in a mount namespace of its own where the test's
directory is bound over /etc/containers (the host's is never touched).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from bench.components import Containerd, Pollen, Registry, stop, unmount_under, wait_for
from tests.integration.conftest import PushedImage

DEBIAN_CONFIG = (
    Path(__file__).parents[1] / "peer/configure/golden/containerd-debian.toml"
).read_text()


def pollen_configure(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "configure", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dumped_config_path(config: Path) -> str:
    """containerd's own reading of the file: its effective config, as TOML (a version 1
    file is dumped in the version 2 layout)."""
    dump = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    cri = tomllib.loads(dump)["plugins"]["io.containerd.grpc.v1.cri"]
    path: str = cri["registry"]["config_path"]
    return path


def served_every_byte(node: Pollen, pushed: PushedImage, registry: Registry, mark: int) -> None:
    assert registry.blob_copies(mark) == {digest: 1 for digest in pushed.blobs}
    served = node.status()["served"]
    sent = served["blob_bytes_from_cache"] + served["blob_bytes_while_downloading"]
    assert sent == sum(pushed.blobs.values())


@pytest.mark.parametrize(
    "text",
    [DEBIAN_CONFIG, 'root = "/var/lib/containerd"\n[plugins.cri]\n  sandbox_image = "x"\n'],
    ids=["debian-version-2", "version-1"],
)
def test_containerd_reads_the_config_path_configure_set(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    hosts = tmp_path / "certs.d"
    pollen_configure("containerd", "--config-file", str(config), "--hosts-dir", str(hosts))
    assert dumped_config_path(config) == str(hosts)
    assert (hosts / "docker.io" / "hosts.toml").exists()
    pollen_configure("containerd", "--config-file", str(config), "--undo")
    assert config.read_text() == text and not (hosts / "docker.io" / "hosts.toml").exists()


def test_containerd_pulls_through_the_node_with_the_files_configure_wrote(
    pushed: PushedImage, pollen: Pollen, containerd: Containerd
) -> None:
    registry = pushed.registry
    config = containerd.dir / "config.toml"
    original = config.read_text()
    hosts = containerd.dir / "certs.d"
    out = pollen_configure(
        "containerd",
        "--config-file",
        str(config),
        "--hosts-dir",
        str(hosts),
        "--registry",
        registry.host,
        "--endpoint",
        pollen.url,
    )
    assert "systemctl restart containerd" in out
    config_path = dumped_config_path(config)
    mark = registry.log_mark()
    result = containerd.ctr("images", "pull", "--hosts-dir", config_path, pushed.ref)
    assert "unpacking linux/amd64" in result.stdout, result.stdout + result.stderr
    served_every_byte(pollen, pushed, registry, mark)
    pollen_configure("containerd", "--config-file", str(config), "--undo")
    assert config.read_text() == original


class Dockerd:
    """A private dockerd (own data, exec root, socket; no bridge, no iptables)."""

    def __init__(self, daemon_json: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dkd-", dir="/tmp"))  # short socket path
        self.socket = f"unix://{self.dir / 'docker.sock'}"
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--config-file",
                str(daemon_json),
                "--data-root",
                str(self.dir / "data"),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.dir / "dockerd.pid"),
                "-H",
                self.socket,
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver",
                "vfs",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            wait_for("dockerd", self._answers, 60, self.proc)
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        return self.docker("version", check=False).returncode == 0

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def log(self) -> str:
        return (self.dir / "dockerd.log").read_text(errors="replace")

    def close(self) -> None:
        stop(self.proc, signal.SIGTERM, timeout=30)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host's /etc as the operator left it."""
    etc = tmp_path / "root" / "etc"
    (etc / "docker").mkdir(parents=True)
    (etc / "docker" / "daemon.json").write_text('{\n  "log-level": "info"\n}\n')
    (etc / "containers").mkdir()
    shutil.copy("/etc/containers/policy.json", etc / "containers" / "policy.json")
    (etc / "containers" / "registries.conf").write_text(
        'unqualified-search-registries = ["docker.io"]\n'
    )
    return tmp_path / "root"


def test_docker_pulls_a_docker_hub_image_through_the_node(
    pushed: PushedImage, pollen: Pollen, root: Path
) -> None:
    """docker asks mirrors for Docker Hub names only: the node's default upstream stands in
    for Docker Hub (the test registry, holding the image under the same name)."""
    pollen_configure("docker", "--root", str(root), "--endpoint", pollen.url)
    daemon_json = root / "etc" / "docker" / "daemon.json"
    dockerd = Dockerd(daemon_json)
    try:
        info = dockerd.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout
        assert pollen.url in info
        mark = pushed.registry.log_mark()
        result = dockerd.docker("pull", f"docker.io/{pushed.repo}:{pushed.tag}", check=False)
        assert result.returncode == 0, result.stdout + result.stderr + dockerd.log()[-3000:]
        served_every_byte(pollen, pushed, pushed.registry, mark)
    finally:
        dockerd.close()
    pollen_configure("docker", "--root", str(root), "--undo")
    assert daemon_json.read_text() == '{\n  "log-level": "info"\n}\n'


def test_podman_pulls_through_the_node_with_the_drop_in(
    pushed: PushedImage, pollen: Pollen, root: Path, tmp_path: Path
) -> None:
    registries_conf = root / "etc" / "containers" / "registries.conf"
    before = registries_conf.read_bytes()
    pollen_configure("podman", "--root", str(root), "--endpoint", pollen.url)
    assert registries_conf.read_bytes() == before
    storage = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman: runroot < 50 chars
    script = (
        f"mount --bind {root / 'etc' / 'containers'} /etc/containers && exec podman "
        f"--root {storage / 'root'} --runroot {storage / 'run'} --storage-driver vfs "
        f"--events-backend file --cgroup-manager cgroupfs "
        f"pull docker.io/{pushed.repo}:{pushed.tag}"
    )
    mark = pushed.registry.log_mark()
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HOME": str(tmp_path)},  # no user registries.conf.d of root's
        )
    finally:
        unmount_under(storage)
        shutil.rmtree(storage, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    served_every_byte(pollen, pushed, pushed.registry, mark)
    pollen_configure("podman", "--root", str(root), "--undo")
    assert not (root / "etc" / "containers" / "registries.conf.d" / "99-pollen.conf").exists()
