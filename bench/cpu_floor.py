"""The least CPU a node can spend per GiB on this machine, whatever its code: each thing every
byte must go through, timed alone, and the sums set against issue 10's CPU targets.

    python -m bench.cpu_floor [--size 1GiB] [--repeat 3] [--pause 10] [--json FILE]

A cold node must receive every byte of a blob, verify it (sha256: a digest the client gave,
so a lying registry or peer is caught; never skipped), store it (a write into the page cache)
and serve it to its client; in the swarm a node also uploads, on average, about as much as it
takes in. Measured here, each as CPU seconds of the one thread doing it (`time.thread_time`,
user and system), in the same run:

- verify: hashlib's sha256 over the bytes in 1 MiB updates (OpenSSL, SHA-NI where the CPU has
  it);
- receive: `recv_into` of the bytes over loopback TCP into one reused 1 MiB buffer, from
  another process sending them with `os.sendfile`;
- serve: `os.sendfile` of a file in the page cache over loopback TCP to another process that
  reads it (a client or a peer costs the node the same);
- store, pages reused: `os.pwrite` of the bytes into a new file right after deleting another
  as large (the kernel hands the freed pages out again);
- store, new pages: the same after a pause (`--pause` seconds). Some hypervisors take memory
  the guest has freed back after a few seconds (virtio-balloon free page reporting), and the
  guest's next touch of it faults on the host: this machine's kernel does.

Floors: the node's design (recv_into, a page-cache write, sendfile) spends receive + verify +
store + serve on the cold path, and one serve more per GiB delivered in the swarm (each node
uploads about what it takes in). The least of what was measured: verify + serve + the cheaper of
receive and store (every byte hashed, sent on, and copied into the node once: out of the socket
and written with O_DIRECT, or spliced into the page cache and hashed from the mapped file),
from the medians and from each step's lowest run. Not measured, and so not bounded here:
zero-copy receive (TCP_ZEROCOPY_RECEIVE), splice or MSG_ZEROCOPY out, other readers than the
one below, pinned CPUs. No Python per piece, no protocol, no scheduling, no piece hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from peer.sizes import format_size, parse_size

CHUNK = 1024 * 1024
# Issue 10's targets, CPU seconds per GiB: `bench.blob_throughput` (one node, cold) and
# `bench.swarm_loopback --nodes 8` (per GiB delivered to the clients).
COLD_TARGET = 1.0
SWARM_TARGET = 2.0


def write_random_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`; their sha256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, CHUNK))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def verify_seconds(path: Path) -> tuple[float, str]:
    """CPU seconds of sha256 over the file's bytes (read beforehand, not timed); the digest."""
    data = path.read_bytes()
    view = memoryview(data)
    digest = hashlib.sha256()
    started = time.thread_time()
    for offset in range(0, len(data), CHUNK):
        digest.update(view[offset : offset + CHUNK])
    seconds = time.thread_time() - started
    return seconds, digest.hexdigest()


# The other end of a measured connection, in a process of its own (so that only the measured
# side's CPU is counted, as a node's process counts only its own): `python -c` with the port.
# The reader reads 256 KiB at a time: of the read sizes tried (4 KiB to 1 MiB), the one that
# cost the sender least (a reader of 1 MiB reads made the same sendfile cost 2-4 x the CPU: on
# loopback the kernel's receive work is charged to whichever side happens to run it). It exits
# 1 unless it read the expected number of bytes.
_READ_TO_END = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as sock:
    sock.settimeout(60)
    buffer, received = bytearray(256 * 1024), 0
    while count := sock.recv_into(buffer):
        received += count
sys.exit(0 if received == int(sys.argv[2]) else 1)
"""
_SEND_FILE = """
import os, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
with sock, open(sys.argv[2], "rb") as f:  # blocking: sendfile ignores a socket timeout
    size, offset = os.fstat(f.fileno()).st_size, 0
    while offset < size:
        sent = os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
        if sent == 0:
            sys.exit("the file ended early")
        offset += sent
"""
PEER_TIMEOUT = 60.0  # seconds the other end may take to connect, and to finish


@contextlib.contextmanager
def _peer(code: str, *args: str) -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    """A loopback connection whose other end is `code` run by another Python process; on
    leaving, the process must have ended well (a clean exit within PEER_TIMEOUT), and on an
    error it is killed. Either way it is reaped."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", code, str(port), *args])
        try:
            sock = _accept_from(listener, child)
        except BaseException:
            _kill(child)
            raise
    try:
        with sock:
            sock.settimeout(PEER_TIMEOUT)
            yield sock, child
    except BaseException:
        _kill(child)
        raise
    try:
        status = child.wait(PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(child)
        raise RuntimeError("the other end of the connection did not finish") from None
    if status != 0:
        raise RuntimeError(f"the other end of the connection failed (exit {status})")


def _accept_from(listener: socket.socket, child: subprocess.Popen[bytes]) -> socket.socket:
    """The child's connection; an error at once if the child ends without connecting."""
    listener.settimeout(0.1)
    deadline = time.monotonic() + PEER_TIMEOUT
    while time.monotonic() < deadline:
        try:
            sock, _ = listener.accept()
            return sock
        except TimeoutError:
            if child.poll() is not None:
                raise RuntimeError(
                    f"the other end ended (exit {child.returncode}) before it connected"
                ) from None
    raise RuntimeError("the other end never connected")


def _kill(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()


def _send_all_file(sock: socket.socket, path: Path) -> None:
    """`path` by `os.sendfile` the way the node sends (trio): a non-blocking socket, woken when
    writable, at most 16 KiB unsent in its buffer (a blocking sendfile cost twice the CPU)."""
    size = path.stat().st_size
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 16 * 1024)
    writable = select.poll()
    writable.register(sock, select.POLLOUT)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            try:
                sent = os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
            except BlockingIOError:
                if not writable.poll(int(PEER_TIMEOUT * 1000)):
                    raise RuntimeError("the reader stopped reading") from None
                continue
            if sent == 0:
                raise RuntimeError(f"{path} ended at {offset} of {size} bytes")
            offset += sent
    sock.setblocking(True)
    sock.settimeout(PEER_TIMEOUT)


def _receive_all(sock: socket.socket, size: int) -> None:
    """Read until the sender closes, into one reused buffer; exactly `size` bytes or an error."""
    buffer = bytearray(CHUNK)
    received = 0
    while count := sock.recv_into(buffer):
        received += count
    if received != size:
        raise RuntimeError(f"received {received} of {size} bytes")


def serve_seconds(path: Path) -> float:
    """CPU seconds of sending the file from the page cache with `os.sendfile` over loopback
    TCP to another process that reads it (a client, or a peer)."""
    size = path.stat().st_size
    with _peer(_READ_TO_END, str(size)) as (sock, _):
        started = time.thread_time()
        _send_all_file(sock, path)
        seconds = time.thread_time() - started
        sock.shutdown(socket.SHUT_WR)
    return seconds


def receive_seconds(path: Path) -> float:
    """CPU seconds of receiving the file over loopback TCP with `recv_into` one reused 1 MiB
    buffer, from another process that sends it with `os.sendfile`."""
    with _peer(_SEND_FILE, str(path)) as (sock, _):
        started = time.thread_time()
        _receive_all(sock, path.stat().st_size)
        return time.thread_time() - started


def store_seconds(path: Path, size: int, pause: float) -> tuple[float, float]:
    """(pages reused, new pages): CPU seconds of writing `size` bytes into a new file at
    `path` right after deleting a file as large, and again `pause` seconds after deleting."""
    block = os.urandom(CHUNK)

    def write_new_file() -> float:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            started = time.thread_time()
            offset = 0
            while offset < size:
                offset += os.pwrite(fd, block[: min(CHUNK, size - offset)], offset)
            return time.thread_time() - started
        finally:
            os.close(fd)

    try:
        write_new_file()  # the file whose pages the next write gets back
        path.unlink()
        reused = write_new_file()
        path.unlink()
        time.sleep(pause)
        fresh = write_new_file()
    finally:
        path.unlink(missing_ok=True)
    return reused, fresh


def measure(directory: Path, size: int, pause: float) -> dict[str, float]:
    """One run of every measurement on `size` bytes; CPU seconds per GiB of each, and the
    floors. Files go in `directory` (the file system a node's store would be on)."""
    source = directory / "source.bin"
    expected = write_random_file(source, size)
    try:
        verify, digest = verify_seconds(source)
        if digest != expected:
            raise RuntimeError("sha256 of the bytes read back differs from the bytes written")
        receive = receive_seconds(source)
        serve = serve_seconds(source)
    finally:
        source.unlink()
    reused, fresh = store_seconds(directory / "store.bin", size, pause)
    per_gib = 2**30 / size
    result = {
        "verify": verify * per_gib,
        "receive": receive * per_gib,
        "serve": serve * per_gib,
        "store_reused_pages": reused * per_gib,
        "store_new_pages": fresh * per_gib,
    }
    # The node's design: recv_into, a page-cache write, sendfile to the client (and, in the
    # swarm, about one upload per byte taken in).
    this_design = result["receive"] + result["verify"] + result["serve"]
    result["cold_floor"] = this_design + result["store_reused_pages"]
    result["cold_floor_new_pages"] = this_design + result["store_new_pages"]
    result["swarm_floor"] = result["cold_floor"] + result["serve"]
    result["swarm_floor_new_pages"] = result["cold_floor_new_pages"] + result["serve"]
    result["cold_floor_least"] = least_cold_floor(result)
    return result


def least_cold_floor(steps: dict[str, float]) -> float:
    """The least of what was measured for the cold path: the bytes hashed and sent on, and
    copied into the node once, out of the socket (then written with O_DIRECT) or into the page
    cache (spliced from the socket, hashed from the mapped file)."""
    return steps["verify"] + min(steps["receive"], steps["store_reused_pages"]) + steps["serve"]


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


@click.command()
@click.option("--size", default="1GiB", show_default=True, help="Bytes per measurement.")
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs; medians and lowest are reported.",
)
@click.option(
    "--pause",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between deleting a file and writing the next, for the new-pages store.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the files go [default: the system's temporary directory].",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Also write results here."
)
def main(
    size: str, repeat: int, pause: float, directory: Path | None, json_path: str | None
) -> None:
    """The CPU every byte costs a node on this machine, each step alone, against issue 10's
    targets (1.0 CPU-s/GiB cold, 2.0 in the loopback swarm)."""
    nbytes = parse_size(size)
    if nbytes < CHUNK:
        raise click.BadParameter(f"at least {format_size(CHUNK)}", param_hint="--size")
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pollen-cpu-floor-", dir=directory) as tmp:
        for run in range(repeat):
            runs.append(measure(Path(tmp), nbytes, pause))
            click.echo(
                f"run {run + 1}/{repeat}: "
                + "  ".join(f"{key} {value:.2f}" for key, value in runs[-1].items()),
                err=True,
            )
    median = _median_of(runs)
    lowest = {key: min(run[key] for run in runs) for key in runs[0]}
    lowest_floor = least_cold_floor(lowest)
    click.echo(f"{format_size(nbytes)} per step, {repeat} run(s), {os.cpu_count()} CPUs:")
    click.echo(f"  {'CPU-s per GiB':<44} median  lowest")
    for label, key in (
        ("verify (sha256)", "verify"),
        ("receive (recv_into, loopback TCP)", "receive"),
        ("serve (sendfile, loopback TCP)", "serve"),
        ("store, pages reused (pwrite)", "store_reused_pages"),
        (f"store, new pages (pwrite, after {pause:g} s)", "store_new_pages"),
        ("cold path, the node's design", "cold_floor"),
        ("  the same with new pages", "cold_floor_new_pages"),
        ("swarm per GiB delivered, the node's design", "swarm_floor"),
        ("  the same with new pages", "swarm_floor_new_pages"),
    ):
        click.echo(f"  {label:<44} {median[key]:6.2f}  {lowest[key]:6.2f}")
    click.echo(
        f"  {'cold path, least of what was measured':<44} {median['cold_floor_least']:6.2f}  "
        f"{lowest_floor:6.2f} (each step's lowest run)"
    )
    click.echo(f"targets: cold path {COLD_TARGET:.1f}, swarm {SWARM_TARGET:.1f} CPU-s/GiB")
    if json_path:
        result: dict[str, Any] = {
            "command": "python -m bench.cpu_floor " + " ".join(sys.argv[1:]),
            "size": nbytes,
            "repeat": repeat,
            "pause": pause,
            "cpus": os.cpu_count(),
            "runs": runs,
            "median": median,
            "lowest": lowest,
            "cold_floor_least_of_lowest": lowest_floor,
            "targets": {"cold": COLD_TARGET, "swarm": SWARM_TARGET},
        }
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
