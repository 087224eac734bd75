"""Time one large blob fetched (a) straight from docker-registry, (b) through a cold pollen node,
(c) through the warm node (cache hit), on loopback; print throughput, the ratios b/a and c/a,
the node's CPU seconds per GiB for the cold fetch (until the blob is stored) and the warm one,
and the node's peak RSS.

    python -m bench.blob_throughput [--size 1GiB] [--repeat 3] [--json FILE]

The client is curl writing to /dev/null, so the client is not the bottleneck. Each cold run
uses a fresh node with an empty store; the registry and the blob are the same for all runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from bench.components import Pollen, Registry
from peer.sizes import format_size, parse_size

REPO = "bench/blob"


def make_blob(path: Path, size: int) -> str:
    rng = random.Random(42)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 8 << 20))
            sha.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + sha.hexdigest()


def upload_blob(registry_url: str, path: Path, digest: str, repo: str = REPO) -> None:
    """Monolithic upload (OCI distribution spec: POST, then PUT with the digest)."""

    def body() -> Any:
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                yield chunk

    with httpx.Client(timeout=600) as client:
        started = client.post(f"{registry_url}/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["location"]
        if location.startswith("/"):
            location = registry_url + location
        sep = "&" if "?" in location else "?"
        done = client.put(
            f"{location}{sep}digest={digest}",
            content=body(),
            headers={
                "content-type": "application/octet-stream",
                "content-length": str(path.stat().st_size),
            },
        )
        done.raise_for_status()


def timed_fetch(url: str, size: int) -> float:
    """Seconds for curl to fetch `url` to /dev/null; checks the byte count."""
    start = time.perf_counter()
    out = subprocess.run(
        ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    if int(out.stdout) != size:
        raise RuntimeError(f"{url}: got {out.stdout} bytes, expected {size}")
    return elapsed


def page_cache_write_seconds(directory: Path, size: int) -> float:
    """Seconds to write `size` new bytes into the page cache (dd, no fsync), then delete them.

    A cold mirror must put every byte into the page cache; on the VMs we measure on, memory
    freed back to the host is slow to touch again, which bounds any cold path from above.
    """
    target = directory / "dd.bin"
    start = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size >> 20}"],
        capture_output=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def wait_until_stored(node: Pollen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while node.status()["transfers"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the node never finished storing the blob")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@click.command()
@click.option("--size", default="1GiB", show_default=True, help="Blob size.")
@click.option(
    "--repeat", default=3, show_default=True, help="Runs of each kind; medians are reported."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Also write results here."
)
def main(size: str, repeat: int, json_path: str | None) -> None:
    """Direct vs cold vs warm throughput of one blob on loopback."""
    nbytes = parse_size(size)
    with tempfile.TemporaryDirectory(prefix="pollen-bench-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        try:
            blob = work / "blob.bin"
            digest = make_blob(blob, nbytes)
            upload_blob(registry.url, blob, digest)
            blob.unlink()
            path = f"/v2/{REPO}/blobs/{digest}"
            direct, cold, warm, rss, dd = [], [], [], [], []
            cold_cpu, warm_cpu = [], []
            for run in range(repeat):
                direct.append(timed_fetch(registry.url + path, nbytes))
                dd.append(page_cache_write_seconds(work, nbytes))
                node = Pollen(
                    work / f"node{run}",
                    "--default-upstream",
                    registry.url,
                    "--log-level",
                    "warning",
                )
                try:
                    assert node.proc is not None
                    pid = node.proc.pid
                    before = cpu_seconds(pid)
                    cold.append(timed_fetch(node.url + path, nbytes))
                    wait_until_stored(node)  # a cache hit, not a join of the fsync in progress
                    cold_cpu.append(cpu_seconds(pid) - before)
                    before = cpu_seconds(pid)
                    warm.append(timed_fetch(node.url + path, nbytes))
                    warm_cpu.append(cpu_seconds(pid) - before)
                    rss.append(peak_rss(pid))
                finally:
                    node.stop()
                    # Drop the store so dirty pages of earlier runs do not slow later ones.
                    shutil.rmtree(node.data_dir, ignore_errors=True)
                print(
                    f"run {run + 1}/{repeat}: direct {direct[-1]:.3f}s  cold {cold[-1]:.3f}s  "
                    f"warm {warm[-1]:.3f}s  dd to page cache {dd[-1]:.3f}s  "
                    f"pollen CPU cold {cold_cpu[-1]:.2f}s warm {warm_cpu[-1]:.2f}s  "
                    f"peak RSS {format_size(rss[-1])}",
                    file=sys.stderr,
                )
        finally:
            registry.stop()

    def rate(seconds: list[float]) -> float:
        return nbytes / statistics.median(seconds)

    result = {
        "command": "python -m bench.blob_throughput " + " ".join(sys.argv[1:]),
        "size": nbytes,
        "repeat": repeat,
        "direct_seconds": direct,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "direct_bytes_per_s": rate(direct),
        "cold_bytes_per_s": rate(cold),
        "warm_bytes_per_s": rate(warm),
        "cold_over_direct": rate(cold) / rate(direct),
        "warm_over_direct": rate(warm) / rate(direct),
        "page_cache_write_seconds": dd,
        "page_cache_write_bytes_per_s": rate(dd),
        "cold_cpu_seconds": cold_cpu,
        "warm_cpu_seconds": warm_cpu,
        "cold_cpu_s_per_gib": statistics.median(cold_cpu) / (nbytes / 2**30),
        "warm_cpu_s_per_gib": statistics.median(warm_cpu) / (nbytes / 2**30),
        "peak_rss_bytes": max(rss),
        "cpus": os.cpu_count(),
    }
    print(f"blob {format_size(nbytes)}, {repeat} runs each, medians:")
    print(f"  (a) direct from docker-registry  {rate(direct) / 1e9:6.2f} GB/s")
    b_a, c_a = result["cold_over_direct"], result["warm_over_direct"]
    print(f"  (b) through a cold pollen node   {rate(cold) / 1e9:6.2f} GB/s   b/a = {b_a:.2f}")
    print(f"  (c) through the warm node        {rate(warm) / 1e9:6.2f} GB/s   c/a = {c_a:.2f}")
    print(
        f"  pollen CPU per GiB               cold {result['cold_cpu_s_per_gib']:.2f} s, "
        f"warm {result['warm_cpu_s_per_gib']:.2f} s"
    )
    print(f"  pollen peak RSS                  {format_size(max(rss))}")
    print(
        f"  reference: dd of new bytes into the page cache {rate(dd) / 1e9:.2f} GB/s "
        "(a bound on any cold mirror on this machine)"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
