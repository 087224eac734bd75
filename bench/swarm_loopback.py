"""N pollen nodes on loopback (each its own 127.0.0.N) pull one image at the same moment.

    python -m bench.swarm_loopback [--nodes 2,4,8] [--size 512MiB] [--layers 4] [--json FILE]
        [--pollen-args '--piece-size 128KiB']

For each N it prints the time until the last node has every blob, the registry's bytes out
divided by the image size (1.00 means each byte left the registry once), and the CPU seconds
all pollen processes spent per GiB delivered to clients. Each node's client fetches the
manifest and then the blobs (3 at a time, like containerd) with curl into /dev/null.
No network shaping here: every link is loopback; the shaped comparison is `bench swarm`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx

from bench.blob_throughput import upload_blob
from bench.components import Cluster, Pollen, Registry
from bench.oci_image import MANIFEST_MEDIA_TYPE, Image, write_image
from peer.sizes import format_size, parse_size

REPO = "bench/swarm"
TAG = "v1"
_BLOB_BYTES = re.compile(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]{64}[^ ]* HTTP/1\.1" 20[06] (\d+)')


def push_image(registry: Registry, image: Image) -> None:
    """Push an OCI layout with our own uploads (skopeo would gzip 512 MiB of random data)."""
    blobs = image.layout / "blobs" / "sha256"
    for descriptor in (image.config, *image.layers):
        path = blobs / descriptor.digest.removeprefix("sha256:")
        upload_blob(registry.url, path, descriptor.digest, repo=REPO)
    manifest = (blobs / image.manifest.digest.removeprefix("sha256:")).read_bytes()
    response = httpx.put(
        f"{registry.url}/v2/{REPO}/manifests/{TAG}",
        content=manifest,
        headers={"content-type": MANIFEST_MEDIA_TYPE},
        timeout=60,
    )
    response.raise_for_status()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def registry_bytes_out(registry: Registry, since: int) -> int:
    with open(registry.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return sum(int(m.group(1)) for m in _BLOB_BYTES.finditer(text))


def pull(node: Pollen, image: Image) -> float:
    """Manifest, then every blob 3 at a time, into /dev/null; seconds until the last byte."""
    start = time.perf_counter()
    accept = f"Accept: {MANIFEST_MEDIA_TYPE}"
    subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-H", accept, f"{node.url}/v2/{REPO}/manifests/{TAG}"],
        check=True,
    )

    def fetch(digest: str) -> None:
        url = f"{node.url}/v2/{REPO}/blobs/{digest}"
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fetch, image.blob_digests()))
    return time.perf_counter() - start


def run_one(
    work: Path, registry: Registry, image: Image, count: int, pollen_args: list[str]
) -> dict[str, Any]:
    cluster = Cluster(
        work / f"n{count}",
        count,
        "--default-upstream",
        registry.url,
        "--log-level",
        "warning",
        *pollen_args,
    )
    try:
        cluster.wait_converged()
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        cpu_before = sum(cpu_seconds(p) for p in pids)
        mark = registry.log_mark()
        barrier = threading.Barrier(count)
        times: list[float] = [0.0] * count

        def client(i: int) -> None:
            barrier.wait()
            times[i] = pull(cluster.nodes[i], image)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        last = time.perf_counter() - started
        cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        out = registry_bytes_out(registry, mark)
    finally:
        cluster.stop()
    moved = count * image.total_size
    return {
        "nodes": count,
        "image_bytes": image.total_size,
        "first_done_s": min(times),
        "last_done_s": last,
        "registry_bytes_out": out,
        "registry_out_over_image": out / image.total_size,
        "pollen_cpu_s": cpu,
        "cpu_s_per_gib": cpu / (moved / 2**30),
    }


@click.command()
@click.option("--nodes", default="2,4,8", show_default=True, help="Cluster sizes to run.")
@click.option("--size", default="512MiB", show_default=True, help="Image size.")
@click.option("--layers", default=4, show_default=True, help="Layers the size is split into.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results here.")
@click.option(
    "--pollen-args",
    default="",
    metavar="ARGS",
    help="Extra options for every `pollen run`, e.g. '--piece-size 128KiB'.",
)
def main(nodes: str, size: str, layers: int, json_path: str | None, pollen_args: str) -> None:
    """All nodes of a loopback cluster pull the same image at once."""
    counts = [int(n) for n in nodes.split(",")]
    layer_size = parse_size(size) // layers
    results = []
    with tempfile.TemporaryDirectory(prefix="pollen-swarm-bench-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        try:
            image = write_image(work / "image", [layer_size] * layers, tag=TAG, seed=7)
            push_image(registry, image)
            for count in counts:
                result = run_one(work, registry, image, count, shlex.split(pollen_args))
                results.append(result)
                print(
                    f"N={count}: last done {result['last_done_s']:.2f}s, "
                    f"registry out {result['registry_out_over_image']:.3f} x image, "
                    f"{result['cpu_s_per_gib']:.2f} CPU s/GiB",
                    file=sys.stderr,
                )
        finally:
            registry.stop()
    image_size = format_size(results[0]["image_bytes"])
    print(f"image {image_size} in {layers} layers, loopback, {os.cpu_count()} CPUs")
    header = ("nodes", "first done", "last done", "registry out/image", "pollen CPU s/GiB")
    print("{:>5} {:>11} {:>10} {:>19} {:>17}".format(*header))
    for r in results:
        print(
            f"{r['nodes']:>5} {r['first_done_s']:>10.2f}s {r['last_done_s']:>9.2f}s "
            f"{r['registry_out_over_image']:>19.3f} {r['cpu_s_per_gib']:>17.2f}"
        )
    if json_path:
        doc = {
            "command": "python -m bench.swarm_loopback " + shlex.join(sys.argv[1:]),
            "pollen_args": pollen_args,
            "results": results,
        }
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
