"""sd_notify over a real unix datagram socket, a path or the abstract namespace."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from peer.service.notify import Notifier


def _listening(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _listening(path) as systemd:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        notifier.ready("serving")
        notifier.watchdog()
        notifier.stopping("bye")
        notifier.close()
        ready = systemd.recv(4096).decode().splitlines()
        assert ready == ["READY=1", "STATUS=serving"]
        assert systemd.recv(4096) == b"WATCHDOG=1"
        assert systemd.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_the_abstract_namespace(tmp_path: Path) -> None:
    name = f"pollen-test-{os.getpid()}"
    with _listening("\0" + name) as systemd:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.reloading()
        lines = systemd.recv(4096).decode().splitlines()
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        notifier.close()


def test_outside_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.ready("x")  # systemd gone: logged once, the node goes on
    gone.watchdog()
    gone.close()


def test_watchdog_interval_is_half_of_watchdog_sec_and_only_for_this_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(own).watchdog_interval == 15.0
    parent = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(parent).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "nonsense"}).watchdog_interval is None


def test_the_one_file_binary_pings_for_its_bootloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyInstaller's one-file bootloader is systemd's main process; the node is its child."""
    bootloader = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getppid())}
    assert Notifier(bootloader).watchdog_interval is None  # not frozen: another process
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert Notifier(bootloader).watchdog_interval == 15.0
