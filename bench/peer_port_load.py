"""What strangers can make a node hold through its peer port, measured on a real node.

    python -m bench.peer_port_load [--connections 150] [--announce 16MiB] [--hold 3]

Starts a `pollen run` process (with a cluster token) on 127.0.0.1, then opens N connections
that each send, before any handshake, the header of a Piece frame announcing `--announce`
bytes of payload, and keep the connection open. Before the fix for this (issue 8), each such
header made the node allocate the payload buffer at once: 150 connections took a node from
37 to 1,355 MiB. Prints the node's RSS before and while the connections are held, and how
many connections the node closed at once (refused frame, or over the connection limits).
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import click

from bench.components import Pollen
from peer.sizes import format_size, parse_size
from wire.events import Piece
from wire.frames import PREFIX, encode

DIGEST = "sha256:" + "b" * 64


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def announcement(size: int) -> bytes:
    _, header, _ = encode(Piece(DIGEST, 0, b""))
    assert isinstance(header, bytes)
    return PREFIX.pack(len(header) + size, len(header)) + header


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the node closed (or reset) the connection."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):  # an Error frame may come before the end
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@click.command()
@click.option("--connections", default=150, show_default=True)
@click.option("--announce", default="16MiB", show_default=True, help="Payload size announced.")
@click.option("--hold", default=3.0, show_default=True, help="Seconds to hold them open.")
def main(connections: int, announce: str, hold: float) -> None:
    frame = announcement(parse_size(announce))
    with tempfile.TemporaryDirectory() as tmp:
        node = Pollen(Path(tmp), "--cluster-token", "bench-token")
        socks: list[socket.socket] = []
        try:
            assert node.proc is not None
            time.sleep(0.5)
            before = rss(node.proc.pid)
            for _ in range(connections):
                sock = socket.create_connection((node.ip, node.peer_port), timeout=5)
                sock.sendall(frame)
                socks.append(sock)
            time.sleep(hold)
            during = rss(node.proc.pid)
            closed = sum(closed_by_peer(s) for s in socks)
            alive = node.running
        finally:
            for sock in socks:
                sock.close()
            node.stop()
    click.echo(
        f"{connections} connections announcing a {announce} piece before the handshake: "
        f"node RSS {format_size(before)} before, {format_size(during)} while held; "
        f"{closed} closed by the node; node still running: {alive}"
    )


if __name__ == "__main__":
    main()
