"""The node as a systemd service, with real processes and sockets: what it tells systemd over
a real unix datagram socket ($NOTIFY_SOCKET), a reload on SIGHUP that changes what the node
does while a download goes on, and a SIGTERM that lets a response in flight finish, closes
the listener and tells the other node at once."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.components import Pollen, http_ok, wait_for
from tests.integration.conftest import PushedImage
from tests.integration.notify_socket import NotifySocket

GRACE_TEST_SECONDS = 60  # bounds every wait below


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


def test_systemd_hears_ready_watchdog_reload_and_stopping(
    pushed: PushedImage, notify: NotifySocket, tmp_path: Path
) -> None:
    config = tmp_path / "pollen.toml"
    config.write_text(f'default-upstream = "{pushed.registry.url}"\ncache-size = "8GiB"\n')
    node = Pollen(
        tmp_path / "node",
        "--config",
        str(config),
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
    )
    try:
        ready = notify.wait_for("READY=1")
        assert http_ok(node.url + "/healthz")  # it said READY when it served
        with urllib.request.urlopen(node.admin_url + "/readyz", timeout=5) as response:
            assert response.status == 200
        first = notify.wait_for("WATCHDOG=1", ready)
        notify.wait_for("WATCHDOG=1", first + 1)  # and again: a ping every 0.2 s
        assert node.status()["store"]["cache_size"] == 8 * 2**30

        config.write_text(f'default-upstream = "{pushed.registry.url}"\ncache-size = "1GiB"\n')
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        reloading = notify.wait_for("RELOADING=1", ready)
        notify.wait_for("READY=1", reloading)
        assert node.status()["store"]["cache_size"] == 2**30
        assert "reloaded: cache_size" in node.log()

        config.write_text("cache-size = [\n")  # a broken file: the running settings stay
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        notify.wait_for("RELOADING=1", reloading + 1)
        wait_for("the reload's error", lambda: "reload failed" in node.log(), 10)
        assert node.status()["store"]["cache_size"] == 2**30
        assert node.running

        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        notify.wait_for("STOPPING=1", reloading)
        assert node.proc.wait(timeout=GRACE_TEST_SECONDS) == 0  # type: ignore[union-attr]
    finally:
        node.stop()


def test_a_reload_moves_a_namespace_to_another_registry_without_dropping_a_download(
    pushed: PushedImage, tmp_path: Path
) -> None:
    """`--upstream` mappings change on SIGHUP: a registry the node could not reach before
    serves after, while a client's download that began before the reload completes."""
    config = tmp_path / "pollen.toml"
    config.write_text(
        f'default-upstream = "{pushed.registry.url}"\n'
        'download-rate = "40MiB/s"\n'
        '[upstream]\n"mirror.test" = "http://127.0.0.1:9"\n'  # nothing listens there
    )
    node = Pollen(tmp_path / "node", "--config", str(config))
    try:
        manifest = f"{node.url}/v2/{pushed.repo}/manifests/{pushed.tag}?ns=mirror.test"
        request = urllib.request.Request(
            manifest, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 502
        refused.value.close()
        # A large blob from the default registry, slowed by the rate cap: under way when the
        # reload comes.
        blob = pushed.largest_layer
        reader, got = _download_under_way(node, pushed, blob)
        config.write_text(
            f'default-upstream = "{pushed.registry.url}"\n'
            f'download-rate = "400MiB/s"\n'
            f'[upstream]\n"mirror.test" = "{pushed.registry.url}"\n'
        )
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for("the reload", lambda: "reloaded: upstreams" in node.log(), 10)
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        reader.join(timeout=GRACE_TEST_SECONDS)
        assert got == [pushed.blobs[blob]]
        assert "reloaded: upstreams, download_rate" in node.log()
    finally:
        node.stop()


def _download_under_way(
    node: Pollen, pushed: PushedImage, blob: str
) -> tuple[threading.Thread, list[int]]:
    """A client reading `blob` through the node, in a thread; returns once the node has the
    transfer in flight. The list gets the byte count the client read."""
    got: list[int] = []
    url = f"{node.url}/v2/{pushed.repo}/blobs/{blob}"
    reader = threading.Thread(target=lambda: got.append(_read_all(url)))
    reader.start()
    wait_for("the download", lambda: node.status()["transfers"], 30)
    return reader, got


def _read_all(url: str) -> int:
    total = 0
    with urllib.request.urlopen(url, timeout=GRACE_TEST_SECONDS) as response:
        while chunk := response.read(1 << 20):
            total += len(chunk)
    return total


def test_sigterm_finishes_the_response_in_flight_and_tells_the_cluster_at_once(
    pushed: PushedImage, tmp_path: Path
) -> None:
    first = Pollen(tmp_path / "a", "--default-upstream", pushed.registry.url, ip="127.0.0.41")
    second = Pollen(
        tmp_path / "b",
        "--default-upstream",
        pushed.registry.url,
        "--join",
        first.peer,
        "--download-rate",
        "20MiB/s",  # the 72 MiB layer takes seconds: in flight at SIGTERM
        ip="127.0.0.42",
    )
    try:
        wait_for("the join", lambda: first.alive_members() == second.alive_members() == 1, 30)
        second_id = second.node_id
        blob = pushed.largest_layer
        reader, got = _download_under_way(second, pushed, blob)
        second.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        stopped_at = time.monotonic()

        def gone_from_first() -> bool:
            members = first.status()["swarm"]["members"]
            return any(m["node_id"] == second_id and m["status"] == "dead" for m in members)

        wait_for("the farewell", gone_from_first, 10)
        told_after = time.monotonic() - stopped_at
        # Not SWIM's detection (a probe period, a suspicion time-out: seconds): the farewell.
        assert "is suspect" not in first.log()
        # No new connection is taken while the response finishes.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.42", second.port), timeout=2).close()
        reader.join(timeout=GRACE_TEST_SECONDS)
        assert got == [pushed.blobs[blob]]  # every byte, not a cut stream
        assert second.proc.wait(timeout=GRACE_TEST_SECONDS) == 0  # type: ignore[union-attr]
        print(f"the other node saw it leave {told_after:.2f}s after SIGTERM")
        assert "stopped with" not in second.log()
    finally:
        second.stop()
        first.stop()


def test_ready_waits_for_the_join(notify: NotifySocket, tmp_path: Path) -> None:
    """A node whose --join answers nobody serves but is not ready (/readyz 503)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.43", 0))  # a seed that never answers
    try:
        node = Pollen(
            tmp_path / "node",
            "--join",
            f"127.0.0.43:{silent.getsockname()[1]}",
            ip="127.0.0.44",
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        try:
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(node.admin_url + "/readyz", timeout=5)
            assert answer.value.code == 503
            assert b"not joined" in answer.value.read()
            answer.value.close()
            with pytest.raises(AssertionError):
                notify.wait_for("READY=1", timeout=2)
        finally:
            node.stop()
    finally:
        silent.close()
