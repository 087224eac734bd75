"""The one-file binary (`make dist`, which `make test` runs first): with an empty environment
(`env -i`, a PATH of the system's directories only, no virtualenv, no PYTHONPATH) it prints its
version and commit, writes a runtime's configuration, and serves a real containerd pull."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.components import REPO, Containerd, free_ports, http_ok, stop, wait_for
from peer.body_parser import INLINE_BYTES
from peer.fetch.manifests import OCI_MANIFEST
from tests.integration.conftest import PushedImage
from tests.integration.notify_socket import NotifySocket

BINARY = REPO / "dist" / "pollen"
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def in_clean_env(*command: str, **variables: str) -> list[str]:
    """`command` with an empty environment but the system PATH and `variables`."""
    settings = {**CLEAN_ENV, **variables}
    return ["env", "-i", *(f"{k}={v}" for k, v in settings.items()), *command]


def clean_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The binary as a host without Python would run it."""
    return subprocess.run(
        in_clean_env(str(BINARY), *args),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def binary() -> Path:
    assert BINARY.exists(), "dist/pollen is missing: `make dist` builds it (`make test` does)"
    return BINARY


def test_version_names_the_commit(binary: Path, tmp_path: Path) -> None:
    result = clean_run("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert result.stdout.startswith("pollen 0.1.0 (commit ")
    assert head in result.stdout  # built from this checkout (maybe "-dirty" while editing)


def test_configure_runs_from_the_binary(binary: Path, tmp_path: Path) -> None:
    (tmp_path / "etc/docker").mkdir(parents=True)
    result = clean_run("configure", "docker", "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registry-mirrors" in (tmp_path / "etc/docker/daemon.json").read_text()


@dataclass(frozen=True)
class BinaryNode:
    url: str  # the registry port
    admin_url: str


@pytest.fixture
def node(binary: Path, tmp_path: Path, pushed: PushedImage) -> Iterator[BinaryNode]:
    port, peer, admin = free_ports(3)
    registry = pushed.registry
    args = [
        "run",
        "--http",
        f"127.0.0.1:{port}",
        "--peer",
        f"127.0.0.1:{peer}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--data-dir",
        str(tmp_path / "store"),
        "--upstream",
        f"{registry.host}={registry.url}",
    ]
    log = open(tmp_path / "pollen.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        in_clean_env(str(binary), *args),
        stdout=log,
        stderr=log,
        cwd=tmp_path,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the binary's node", lambda: http_ok(url + "/healthz"), 60, proc)
        yield BinaryNode(url, f"http://127.0.0.1:{admin}")
    finally:
        stop(proc)  # env exec()s the binary: this PID is the node's


def test_containerd_pulls_through_the_binary(
    node: BinaryNode, pushed: PushedImage, containerd: Containerd
) -> None:
    registry = pushed.registry
    containerd.mirror(registry.host, registry.url, node.url)
    mark = registry.log_mark()
    result = containerd.pull(pushed.ref)
    assert "unpacking linux/amd64" in result.stdout, result.stdout + result.stderr
    assert registry.blob_copies(mark) == {digest: 1 for digest in pushed.blobs}


def test_the_binary_parses_a_large_manifest_in_its_worker(
    node: BinaryNode, pushed: PushedImage
) -> None:
    """The worker process is the binary run again (`multiprocessing.freeze_support`): a
    manifest over the inline bound is parsed there, and what it read is used (its blobs
    prefetched)."""
    padded = {**pushed.manifest, "padding": [[[]]] * 100_000}  # registries keep what they store
    body = json.dumps(padded, separators=(",", ":")).encode()
    assert len(body) > INLINE_BYTES
    registry = pushed.registry
    put = urllib.request.Request(
        f"{registry.url}/v2/{pushed.repo}/manifests/padded",
        data=body,
        method="PUT",
        headers={"Content-Type": OCI_MANIFEST},
    )
    with urllib.request.urlopen(put, timeout=30) as answer:
        assert answer.status == 201
    get = urllib.request.Request(
        f"{node.url}/v2/{pushed.repo}/manifests/padded?ns={registry.host}",
        headers={"Accept": OCI_MANIFEST},
    )
    with urllib.request.urlopen(get, timeout=60) as answer:
        assert answer.read() == body

    def metrics() -> str:
        with urllib.request.urlopen(node.admin_url + "/metrics", timeout=30) as answer:
            text: str = answer.read().decode()
            return text

    # The worker's facts were used: the manifest's blobs queued for prefetch (after the answer).
    wait_for("the prefetch", lambda: "\npollen_prefetch_manifests_total 1.0\n" in metrics(), 30)
    assert "\npollen_bodies_parsed_in_worker_total 1.0\n" in metrics()
    assert "\npollen_parser_worker_failures_total 0.0\n" in metrics()


def test_the_binary_under_systemds_protocol(binary: Path, tmp_path: Path) -> None:
    """systemd's main process is the binary's bootloader (WATCHDOG_PID names it); the node
    runs in its child: READY, the watchdog pings, a reload and a stop all go through."""
    notify = NotifySocket(tmp_path / "notify.sock")
    port, peer, admin = free_ports(3)
    command = (
        f"export WATCHDOG_PID=$$; exec {binary} run --http 127.0.0.1:{port} "
        f"--peer 127.0.0.1:{peer} --admin 127.0.0.1:{admin} "
        f"--data-dir {tmp_path / 'store'}"
    )
    log = open(tmp_path / "pollen.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        in_clean_env("sh", "-c", command, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000"),
        stdout=log,
        stderr=log,
        cwd=tmp_path,
    )
    log.close()
    try:
        ready = notify.wait_for("READY=1", timeout=60)
        assert http_ok(f"http://127.0.0.1:{port}/healthz")
        notify.wait_for("WATCHDOG=1", notify.wait_for("WATCHDOG=1", ready) + 1)
        proc.send_signal(signal.SIGHUP)  # to the bootloader, which passes it on
        reloading = notify.wait_for("RELOADING=1", ready)
        notify.wait_for("READY=1", reloading)
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", reloading)
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
        notify.close()
