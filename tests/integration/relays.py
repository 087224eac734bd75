"""Test-side helpers for the integration tests: a throttled relay to a real registry, the digest
of a file (what a pulled blob is checked against), curl in the background."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import threading
import time
from pathlib import Path

from bench.components import Pollen
from tests.integration.conftest import REPO_NAME, TAG


class ThrottledProxy:
    """A TCP proxy that passes upstream->client bytes at `rate` bytes/s and records requests.

    It stands for a slow WAN link between pollen and the registry, so faults (registry killed,
    node killed) land mid-blob. It only relays; the registry behind it is the real one.
    """

    def __init__(self, target_port: int, rate: int) -> None:
        self.rate = rate
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.request_heads: list[str] = []
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._pipe, args=(client, upstream, None, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, self.rate, False), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int | None, record: bool) -> None:
        started = time.monotonic()
        moved = 0
        try:
            while not self._closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    self.request_heads.append(data.decode("latin-1", "replace"))
                dst.sendall(data)
                moved += len(data)
                if rate:
                    ahead = moved / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=5)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def curl(url: str, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["curl", "-s", "-f", "-o", str(out), *extra, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def skopeo_copy(node: Pollen, out: Path, *creds: str) -> subprocess.CompletedProcess[str]:
    """skopeo copies the test image through `node` into a dir: (its result, not checked)."""
    return subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            *creds,
            f"docker://{node.host}/{REPO_NAME}:{TAG}",
            f"dir:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
