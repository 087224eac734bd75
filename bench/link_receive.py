"""Receive path of a peer link: how fast piece frames come off a loopback TCP connection.

    python -m bench.link_receive [--size 1GiB] [--piece-size 4MiB] [--repeat 3]

A sender thread sends Piece frames the way an uploading node does (header with send, payload
with os.sendfile from a file); the trio receiver decodes them in several ways and hashes every
piece (xxh3-128, as a fetching node does before storing it):

- `feed`: 256 KiB `receive_some` reads fed to the decoder, which reassembles each payload in a
  bytearray and copies it out (the path before payload buffers);
- `recv_into`: the payload is read straight into its own buffer (`payload_buffer()`), a new
  buffer per piece;
- `recv_into+recycle`: the same, with each buffer given back after use (what peer_link does);
- `sealed`: --peer-encryption. The sender reads each piece (os.pread) and seals it with
  AES-256-GCM (no sendfile); the receiver reads each sealed payload record into its own
  buffer as above and opens it (a new plaintext buffer per piece).

Prints GB/s, receiver CPU seconds per GiB (process CPU minus the sender thread's) and the
sender thread's CPU seconds per GiB, side by side for the plain and the sealed path.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import click
import trio
import xxhash

from peer.sizes import format_size, parse_size
from wire.events import FileRange, Piece
from wire.frames import PREFIX, FrameDecoder, encode
from wire.seal import Opener, Sealer

DIGEST = "sha256:" + "0" * 64
RECEIVE_SIZE = 256 * 1024
MODES = ("feed", "recv_into", "recv_into+recycle", "sealed")


def _send_pieces(
    sock: socket.socket, path: Path, count: int, piece_size: int, key: bytes | None
) -> None:
    with open(path, "rb") as f:
        sealer = Sealer(key) if key is not None else None
        for index in range(count):
            if sealer is not None:
                # As peer_link sends with --peer-encryption: read the piece, seal, send.
                data = os.pread(f.fileno(), piece_size, 0)
                for record in sealer.seal_frame(encode(Piece(DIGEST, index, data))):
                    sock.sendall(record)
                continue
            # Header as encode() makes it; the prefix announces the payload that follows
            # from the file (sendfile), as peer_link sends a FileRange.
            _, header, _ = encode(Piece(DIGEST, index, b""))
            assert isinstance(header, bytes)
            sock.sendall(PREFIX.pack(len(header) + piece_size, len(header)) + header)
            offset, left = 0, piece_size
            while left:
                sent = os.sendfile(sock.fileno(), f.fileno(), offset, left)
                offset += sent
                left -= sent
    sock.shutdown(socket.SHUT_WR)


async def _receive(
    sock: trio.socket.SocketType, mode: str, piece_size: int, key: bytes | None
) -> int:
    decoder = FrameDecoder(piece_size + 65536)
    if key is not None:
        decoder.start_opening(Opener(key))
    pieces = 0
    while True:
        target = decoder.payload_buffer() if mode != "feed" else None
        if target is not None:
            count = await sock.recv_into(target)
            target.release()
            if count == 0:
                raise RuntimeError("connection closed inside a payload")
            decoder.payload_received(count)
        else:
            data = await sock.recv(RECEIVE_SIZE)
            if not data:
                return pieces
            decoder.feed(data)
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, Piece) and not isinstance(event.data, FileRange)
            xxhash.xxh3_128_digest(event.data)
            pieces += 1
            if mode in ("recv_into+recycle", "sealed") and isinstance(event.data, bytearray):
                decoder.recycle(event.data)


def run_once(path: Path, size: int, piece_size: int, mode: str) -> tuple[float, float, float]:
    """(seconds, receiver CPU seconds, sender CPU seconds) to move `size` bytes in pieces."""
    count = size // piece_size
    key = os.urandom(32) if mode == "sealed" else None
    listener = socket.create_server(("127.0.0.1", 0))
    left = socket.create_connection(listener.getsockname())
    right, _ = listener.accept()
    listener.close()
    sender_cpu: list[float] = []

    def sender() -> None:
        started = time.thread_time()
        _send_pieces(left, path, count, piece_size, key)
        sender_cpu.append(time.thread_time() - started)

    async def main() -> int:
        return await _receive(trio.socket.from_stdlib_socket(right), mode, piece_size, key)

    thread = threading.Thread(target=sender)
    cpu0, t0 = time.process_time(), time.perf_counter()
    thread.start()
    received = trio.run(main)
    thread.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0 - sender_cpu[0]
    left.close()
    right.close()
    if received != count:
        raise RuntimeError(f"received {received} of {count} pieces")
    return elapsed, cpu, sender_cpu[0]


@click.command()
@click.option("--size", default="1GiB", show_default=True, help="Bytes sent per run.")
@click.option("--piece-size", default="4MiB", show_default=True)
@click.option("--repeat", default=3, show_default=True, help="Runs per mode (median shown).")
@click.option(
    "--modes",
    default=",".join(MODES),
    show_default=True,
    help="Comma-separated modes to run, e.g. recv_into+recycle,sealed for plain vs sealed.",
)
def main(size: str, piece_size: str, repeat: int, modes: str) -> None:
    total, piece = parse_size(size), parse_size(piece_size)
    chosen = [m for m in modes.split(",") if m]
    unknown = set(chosen) - set(MODES)
    if unknown:
        raise click.BadParameter(f"unknown mode(s) {sorted(unknown)}; from {MODES}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "piece"
        path.write_bytes(os.urandom(piece))
        # Every piece is sent from the same file: the sender reads from the page cache.
        click.echo(f"{format_size(total)} in {format_size(piece)} pieces over loopback TCP")
        results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in chosen}
        for _ in range(repeat):
            for mode in chosen:  # interleaved so machine noise hits every mode alike
                results[mode].append(run_once(path, total, piece, mode))
        gib = total / 2**30
        for mode in chosen:
            seconds = statistics.median(r[0] for r in results[mode])
            cpu = statistics.median(r[1] for r in results[mode])
            sender = statistics.median(r[2] for r in results[mode])
            click.echo(
                f"{mode:>18}: {total / seconds / 1e9:5.2f} GB/s  "
                f"receiver CPU {cpu / gib:4.2f} s/GiB  sender CPU {sender / gib:4.2f} s/GiB  "
                f"(median of {repeat})"
            )


if __name__ == "__main__":
    main()
