"""`pollen run` on an address another process holds: one clear line naming the listener and
the address, exit status 1, no traceback (trio wraps the bind error in an exception group,
which a plain `except OSError` never sees)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.components import REPO, free_port, free_ports

IP = "127.0.0.1"


def run_node(tmp_path: Path, http: int, peer: int, admin: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "peer", "run",
            "--http", f"{IP}:{http}", "--peer", f"{IP}:{peer}", "--admin", f"{IP}:{admin}",
            "--data-dir", str(tmp_path / "store"),
        ],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


@pytest.fixture
def holder() -> Iterator[socket.socket]:
    """A TCP listener held by this test (not by the node); its port's UDP side is free."""
    with socket.socket() as tcp:
        tcp.bind((IP, free_port(IP)))
        tcp.listen()
        yield tcp


@pytest.mark.parametrize(
    ("busy", "role"),
    [("http", "registry API"), ("peer", "peer links"), ("admin", "admin API")],
)
def test_a_busy_listener_address_is_one_clear_error(
    tmp_path: Path, holder: socket.socket, busy: str, role: str
) -> None:
    held = holder.getsockname()[1]
    http, peer, admin = free_ports(3, IP)
    ports = {"http": http, "peer": peer, "admin": admin, busy: held}
    result = run_node(tmp_path, ports["http"], ports["peer"], ports["admin"])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen on {IP}:{held} ({role})" in result.stderr
    assert "in use" in result.stderr


def test_a_busy_gossip_port_is_one_clear_error(tmp_path: Path) -> None:
    # Only the UDP side is held: the peer port's datagrams (gossip) cannot be bound.
    port = free_port(IP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((IP, port))
        http, admin = free_ports(2, IP)
        result = run_node(tmp_path, http, port, admin)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen on {IP}:{port} (gossip, UDP)" in result.stderr
