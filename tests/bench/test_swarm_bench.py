"""`pollen bench swarm --quick` on a real namespace testbed, as a user runs it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.testbed import Testbed, TestbedError

pytestmark = pytest.mark.integration


def namespaces(pid: int) -> set[str]:
    """The namespaces of the testbed that process `pid` made (their names carry its pid):
    another testbed on the machine meanwhile is not this test's to account for."""
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout
    return {e["name"] for e in json.loads(out or "[]") if e["name"].startswith(f"pb{pid}-")}


def run_bench(argv: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `argv` to its end (killed after `timeout`): its result and its pid."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), proc.pid


def test_quick_run_compares_all_three_contenders_and_removes_the_testbed(tmp_path: Path) -> None:
    result, pid = run_bench(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", "--quick",
         "--json", str(tmp_path / "r.json"), "--chart", str(tmp_path / "r.png"),
         "--timeline", "0.5", "--pollen-args", "--piece-size 2MiB --upload-rate 1GiB/s"],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert namespaces(pid) == set()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["nodes"] == 4 and doc["t_min_s"] > 0
    # The testbed's veths (MTU 1500) and TCP with timestamps (each namespace's default): 1448
    # bytes of payload in every 1514 the shapers count.
    assert doc["payload_share"] == pytest.approx(1448 / 1514, abs=1e-5)
    assert doc["payload_bound_s"] == pytest.approx(doc["t_min_s"] * 1514 / 1448, rel=1e-3)
    assert doc["pollen_args"] == "--piece-size 2MiB --upload-rate 1GiB/s"
    machine_default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    assert doc["hosts_congestion_control"] == machine_default
    assert doc["pollen_peer_congestion_control"] == "cubic"
    results = {r["contender"]: r for r in doc["results"]}
    assert list(results) == ["direct", "pollen", "bittorrent"]
    for r in results.values():
        assert r["hosts_done"] == 4, r["errors"]
        assert r["last_done_s"] >= r["first_done_s"] > 0
        # Nothing finishes faster than the bound allows (a check on the harness's clock).
        assert r["last_done_s"] >= 0.9 * doc["t_min_s"]
        assert r["last_over_payload_bound"] < r["last_over_t_min"]
    # Direct: every host's copy left the origin; pollen: about one copy in all.
    assert results["direct"]["origin_payload_over_image"] >= 3.9
    assert results["pollen"]["origin_payload_over_image"] <= 1.02
    assert results["bittorrent"]["origin_payload_bytes"] > 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "T_min" in result.stdout
    assert "payload bound" in result.stdout
    # The timeline's rates, over its intervals, add up to what crossed the links: the
    # origin's wire bytes (read apart, from its own side), and at least the image into
    # every host.
    for r in results.values():
        rows = r["timeline"]
        assert rows and rows[-1]["to_s"] >= r["last_done_s"]
        span = {id(row): row["to_s"] - row["from_s"] for row in rows}
        origin_sent = sum(row["origin_up_bytes_per_s"] * span[id(row)] for row in rows)
        assert origin_sent == pytest.approx(r["origin_wire_bytes"], rel=0.05)
        for host in r["per_host_done_s"]:
            received = sum(row["down_bytes_per_s"][host] * span[id(row)] for row in rows)
            assert received >= doc["image_bytes"]
    assert "the links over time" in result.stdout
    # TCP's counters, read in the hosts' namespaces: every node host received the image over
    # its veth, in segments of at most an MSS (under the veth's 1,500 bytes), which some host
    # sent; the origin's namespace alone sends about one copy.
    for r in results.values():
        losses = r["losses"]
        assert losses["tcp_segments"] * 1500 >= doc["nodes"] * doc["image_bytes"]
        assert 0 <= losses["tcp_retransmitted_share"] < 1
        assert losses["uplink_drops"] >= 0 and losses["downlink_drops"] >= 0
        # Each host's downlink drops over time (the switch's port), within the same run's
        # total (read before and after it; a tenth per second of rounding per interval).
        rows = r["timeline"]
        dropped = 0.0
        for row in rows:
            assert set(row["down_drops_per_s"]) == set(r["per_host_done_s"])
            assert all(value >= 0 for value in row["down_drops_per_s"].values())
            dropped += sum(row["down_drops_per_s"].values()) * (row["to_s"] - row["from_s"])
        slack = sum(0.05 * len(r["per_host_done_s"]) * (x["to_s"] - x["from_s"]) for x in rows)
        assert dropped <= losses["downlink_drops"] + slack
    assert result.stdout.count("TCP retransmitted") == 3


def test_rtt_without_netem_fails_clearly_and_leaves_nothing() -> None:
    try:
        with Testbed(2, 10**6, 10**6, rtt_ms=20):
            pass
    except TestbedError as exc:
        assert "netem" in str(exc) and "--rtt" in str(exc)
    else:
        pytest.skip("this kernel has netem: --rtt is applied, so there is no error to check")
    finally:
        assert namespaces(os.getpid()) == set()


def test_sigterm_mid_run_removes_the_testbed_and_its_processes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", "--quick",
         "--contenders", "pollen", "--workdir", str(tmp_path / "w")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        # Wait for the pollen nodes to be up inside the testbed, then stop the run.
        while not list((tmp_path / "w").glob("runs/pollen/node*/pollen.log")):
            assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, output
    assert "the testbed was removed" in output
    assert namespaces(proc.pid) == set()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "w")], capture_output=True)
    assert leftovers.stdout == b""


def test_blob_owners_names_the_host_first_in_rendezvous_order() -> None:
    from bench.swarm_report import blob_owners
    from peer.cluster.rendezvous import owner_order

    node_ids = {f"node{i}": bytes([i]) * 16 for i in range(1, 9)}
    digests = [f"sha256:{i:064x}" for i in range(20)]
    uplinks = {h: 100 if h != "node8" else 25 for h in node_ids}  # as each host declares
    owners = blob_owners(digests, {h: n.hex() for h, n in node_ids.items()}, uplinks)
    declared = {node_ids[h]: rate for h, rate in uplinks.items()}
    for digest in digests:
        first = owner_order(digest, node_ids.values(), declared)[0]
        assert node_ids[owners[digest]] == first
    assert len(set(owners.values())) > 1  # 20 blobs do not all land on one host


def quick_pollen_run(tmp_path: Path, *options: str) -> tuple[str, dict[str, Any]]:
    """`pollen bench swarm --quick` of pollen alone with `options`: its output and JSON; the
    testbed is gone afterwards."""
    result, pid = run_bench(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", "--quick", "--contenders",
         "pollen", "--uplink", "20mbit", *options, "--json", str(tmp_path / "r.json")],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert namespaces(pid) == set()
    doc: dict[str, Any] = json.loads((tmp_path / "r.json").read_text())
    return result.stdout, doc


def test_killed_hosts_stop_counting_and_the_rest_complete(tmp_path: Path) -> None:
    """`--kill owner@S`: the node owning the largest layer is SIGKILLed mid-pull; the other
    hosts still get the whole image, and the report counts the survivors only."""
    stdout, doc = quick_pollen_run(tmp_path, "--kill", "owner@3")
    assert doc["kills"] == ["owner@3"]
    (pollen,) = doc["results"]
    assert len(pollen["hosts_killed"]) == 1 and pollen["hosts"] == 3
    assert pollen["hosts_done"] == 3, pollen["errors"]
    assert "(1 killed)" in stdout


def test_joining_hosts_start_late_pull_and_the_registry_sends_the_image_once(
    tmp_path: Path,
) -> None:
    """`--join 1@2`: the last host's node starts 2 s into the pull (through the first host)
    and its client pulls as soon as it serves; it completes, and it takes the image from the
    swarm (the registry's bytes are those of one image)."""
    stdout, doc = quick_pollen_run(tmp_path, "--join", "1@2")
    assert doc["joins"] == ["1@2"]
    (pollen,) = doc["results"]
    assert list(pollen["hosts_joined"]) == ["node4"] and pollen["hosts_joined"]["node4"] >= 2
    assert pollen["hosts_done"] == 4, pollen["errors"]
    assert pollen["per_host_done_s"]["node4"] > pollen["hosts_joined"]["node4"]
    # Each blob once; each node asks the registry for the manifest itself (a few KB).
    assert pollen["origin_payload_over_image"] <= 1.001
    assert "(1 joined)" in stdout


@pytest.mark.parametrize("option", ["--kill", "--join"])
def test_kill_and_join_options_are_checked(option: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", option, "0@3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "COUNT@SECONDS" in result.stderr


def test_slow_hosts_are_the_last_ones_at_their_own_rate() -> None:
    testbed = Testbed(4, 100, 100, slow=(1, 25))  # not entered: nothing is created
    assert [h.uplink for h in testbed.nodes] == [100, 100, 100, 25]


def test_the_dir_client_copies_explicit_layers_one_blob_at_a_time(tmp_path: Path) -> None:
    """`--client dir --layer-sizes ...`: the image has those layers, in that order, and each
    host's skopeo copies it into a `dir:` directory, one blob at a time: in the direct run the
    registry's log shows no two blob downloads of a host overlapping (with an OCI layout
    they do: 6 at a time). Through pollen too, every host completes."""
    work = tmp_path / "work"
    doc = three_hosts_direct_then_pollen(tmp_path, "dir", "6MiB,1MiB,300KiB")
    # Each layer's blob is its content plus tar framing (headers, padding to 10 KiB records).
    wanted = [6 * 2**20, 2**20, 300 * 2**10]
    assert all(0 < size - want <= 20480 for size, want in zip(doc["layers"], wanted, strict=True))
    results = {r["contender"]: r for r in doc["results"]}
    assert all(r["hosts_done"] == 3 for r in results.values()), results
    assert results["pollen"]["origin_payload_over_image"] <= 1.001
    for contender in ("direct", "pollen"):
        assert all((work / "runs" / contender / f"node{i}" / "dir").is_dir() for i in (1, 2, 3))
    downloads = blob_downloads(work / "origin" / "registry.log")
    assert len(downloads) == 3
    for spans in downloads.values():
        # The direct run came first: each host's first 4 (the config and 3 layers, each once).
        direct = sorted(spans)[:4]
        assert len({digest for _start, _end, digest in direct}) == 4
        assert all(later[0] >= earlier[1] - 0.002 for earlier, later in itertools.pairwise(direct))


def test_the_ctr_client_pulls_three_blobs_at_a_time_into_containerd(tmp_path: Path) -> None:
    """`--client ctr`: each host's `ctr images pull` into a containerd of its own, 3 blobs at
    a time (the kubelet's CRI plugin's default): in the direct run the registry's log shows a
    host's blob downloads overlapping 3 deep and never 4. Through pollen too, every host
    completes, and no containerd is left running."""
    work = tmp_path / "work"
    before = containerd_pids()
    doc = three_hosts_direct_then_pollen(tmp_path, "ctr", "3MiB,3MiB,3MiB,3MiB,2MiB")
    assert containerd_pids() - before == set()
    results = {r["contender"]: r for r in doc["results"]}
    assert all(r["hosts_done"] == 3 for r in results.values()), results
    assert results["pollen"]["origin_payload_over_image"] <= 1.001
    downloads = blob_downloads(work / "origin" / "registry.log")
    assert len(downloads) == 3
    done = results["direct"]["per_host_done_s"]
    for address, spans in downloads.items():
        # The direct run came first: each host's first 6 (the config and 5 layers, each once).
        direct = sorted(spans)[:6]
        assert len({digest for _start, _end, digest in direct}) == 6
        assert most_at_once(direct) == 3
        # Done no sooner than its blobs took to come (the run began before its first GET):
        # the time is ctr's, when every blob was in, not when it started.
        host = "node" + address.rsplit(".", 1)[1]
        assert done[host] >= max(end for _, end, _ in direct) - direct[0][0]


def three_hosts_direct_then_pollen(tmp_path: Path, client: str, layer_sizes: str) -> Any:
    """`bench swarm` of 3 hosts at 40 Mbit/s with `client` and those layers, direct then
    pollen, its work kept in tmp_path/work: the JSON document, once the run succeeded and
    left no namespace."""
    result, pid = run_bench(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", "--nodes", "3",
         "--uplink", "40mbit", "--layer-sizes", layer_sizes, "--client", client,
         "--contenders", "direct,pollen", "--workdir", str(tmp_path / "work"),
         "--json", str(tmp_path / "r.json")],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert namespaces(pid) == set()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["client"] == client
    return doc


def most_at_once(spans: list[tuple[float, float, str]]) -> int:
    """The most downloads of `spans` in progress at one moment."""
    edges = sorted([(start, 1) for start, _, _ in spans] + [(end, -1) for _, end, _ in spans])
    depth = deepest = 0
    for _, step in edges:  # at a tie an end sorts first: back to back is not at once
        depth += step
        deepest = max(deepest, depth)
    return deepest


def containerd_pids() -> set[int]:
    """The PIDs of the containerd daemons running now (to see that none is left)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "containerd":
                    pids.add(int(entry.name))
    return pids


def blob_downloads(registry_log: Path) -> dict[str, list[tuple[float, float, str]]]:
    """(start, end in seconds, digest) of each blob GET docker-registry answered, by the
    address it came from (the log gives each request's end time and duration)."""
    downloads: dict[str, list[tuple[float, float, str]]] = {}
    for line in registry_log.read_text().splitlines():
        fields = dict(re.findall(r'([\w.]+)=("[^"]*"|\S+)', line))
        uri = fields.get("http.request.uri", "").strip('"')
        if (
            fields.get("msg") != '"response completed"'
            or fields.get("http.request.method") != "GET"
            or "/blobs/sha256:" not in uri
        ):
            continue
        end = datetime.fromisoformat(fields["time"].strip('"').rstrip("Z")[:26]).timestamp()
        start = end - parse_go_duration(fields["http.response.duration"])
        address = fields["http.request.remoteaddr"].strip('"').rsplit(":", 1)[0]
        downloads.setdefault(address, []).append((start, end, uri.rsplit(":", 1)[1]))
    return downloads


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration as docker-registry logs it (`7.33ms`, `1.2s`, `1m2.5s`)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([\d.]+)(h|ms|m|s|us|µs|ns)", text)
    assert parts, text
    return sum(float(value) * units[unit] for value, unit in parts)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--client", "dir", "--scenario", "release"], "dir holds one image only"),
        (["--layer-sizes", "1MiB", "--profile", "jib"], "plain image of a first rollout"),
        (["--layer-sizes", "1MiB,0"], "size must be positive"),
        (["--layer-sizes", ","], "at least one size"),
    ],
)
def test_client_and_layer_sizes_are_checked(options: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "bench", "swarm", *options],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
