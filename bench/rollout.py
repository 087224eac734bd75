"""Rollouts on a testbed: every node host fetches the same image at the same moment, through
one contender (straight from the registry, through pollen, or over BitTorrent).

Each contender starts from empty caches, starts all hosts' clients at once, and records when
each host finished, what the origin served (payload bytes, from the registry's access log or
the BitTorrent seeder's own count) and what crossed the origin's link (interface counter).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.components import REPO, Containerd, registry_bytes_served, registry_config
from bench.link_timeline import LinkSampler, timeline_rows
from bench.oci_image import Image, push
from bench.tcp_losses import Losses, UnreadableCounters
from bench.testbed import Host, Testbed, TestbedError, stop_process
from peer.cluster.rendezvous import owner_order
from peer.front.admin import ADMIN_TOKEN_FILE

REGISTRY_PORT = 5000
POLLEN_HTTP = "127.0.0.1:5001"
POLLEN_ADMIN = "127.0.0.1:5003"
PEER_PORT = 65002
TRACKER_PORT = 6969
SEEDER_RPC = 6800
REPOSITORY = "bench/app"
CONVERGE_TIMEOUT = 60.0

Progress = Callable[[str], None]
T = TypeVar("T")


class RolloutError(Exception):
    """A contender could not be set up (not: a host that failed, which is a result)."""


@dataclass
class Outcome:
    contender: str
    done: dict[str, float | None] = field(default_factory=dict)  # host -> seconds, None: failed
    errors: dict[str, str] = field(default_factory=dict)
    origin_payload: int = 0  # bytes the origin served to the hosts
    origin_wire: int = 0  # bytes the origin's link carried (headers, retransmits included)
    cpu_busy: float = 0.0  # share of the machine's CPU time busy while the hosts fetched
    node_ids: dict[str, str] = field(default_factory=dict)  # host -> pollen node id (hex)
    killed: dict[str, float] = field(default_factory=dict)  # host -> when it was SIGKILLed
    joined: dict[str, float] = field(default_factory=dict)  # host -> when its node started
    # CPU seconds while the hosts fetched: the clients (skopeo, aria2c: every child process
    # that ended meanwhile) and the long-running daemons (pollen nodes) apart.
    client_cpu_s: float = 0.0
    daemon_cpu_s: float = 0.0
    # What each host's link carried, interval by interval (`Rollout.timeline`; empty: off,
    # or `timeline_error`: the links could not be read).
    timeline: list[dict[str, Any]] = field(default_factory=list)
    timeline_error: str | None = None
    # What TCP retransmitted and the shapers dropped while the hosts fetched (None: the
    # counters could not be read; `losses_error` says why).
    losses: Losses | None = None
    losses_error: str | None = None
    started: float | None = None  # time.monotonic() when the hosts' commands started

    @property
    def times(self) -> list[float]:
        return sorted(t for t in self.done.values() if t is not None)

    @property
    def complete(self) -> bool:
        return bool(self.done) and all(t is not None for t in self.done.values())


@dataclass
class Origin:
    """docker-registry on the origin host, holding the images under test."""

    testbed: Testbed
    workdir: Path

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layers: list[tuple[str, int]] = []
        host = self.testbed.origin
        self.address = f"{host.ip}:{REGISTRY_PORT}"
        self.url = f"http://{self.address}"
        config = registry_config(self.workdir, self.address)
        self.log_path = self.workdir / "registry.log"
        self.proc = self.testbed.spawn(
            host, ["docker-registry", "serve", str(config)], self.log_path
        )
        wait_until(
            "docker-registry on the origin",
            lambda: _curl_ok(self.testbed, host, self.url + "/v2/"),
            30,
            self.proc,
        )

    def push(self, image: Image) -> None:
        self.layers = [(d.digest, d.size) for d in image.layers]  # of the last image pushed
        prefix = self.testbed.command(self.testbed.origin, [])
        push(image.layout, image.tag, f"{self.address}/{REPOSITORY}:{image.tag}", False, prefix)

    def served_since(self, mark: int) -> int:
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return registry_bytes_served(f.read().decode("utf-8", "replace"))

    def log_mark(self) -> int:
        return self.log_path.stat().st_size


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RolloutError(f"{what}: the process exited with {proc.returncode}")
        if check():
            return
        time.sleep(0.2)
    raise RolloutError(f"{what}: not ready after {timeout:.0f}s")


def _read_losses(testbed: Testbed) -> tuple[Losses | None, str | None]:
    """The testbed's loss counters now, or None and why they could not be read (a report
    without them, not a failed run)."""
    try:
        return testbed.losses(), None
    except (TestbedError, UnreadableCounters, subprocess.SubprocessError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _curl(testbed: Testbed, host: Host, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = testbed.command(host, ["curl", "-s", "-S", "--max-time", "5", *extra, url])
    return subprocess.run(argv, capture_output=True, text=True, timeout=15)


def _node_status(testbed: Testbed, host: Host, base: Path) -> subprocess.CompletedProcess[str]:
    """The status document of the pollen node on `host`, through its admin API."""
    token_file = base / host.name / "store" / ADMIN_TOKEN_FILE
    token = token_file.read_text().strip() if token_file.exists() else ""
    url = f"http://{POLLEN_ADMIN}/_pollen/status"
    return _curl(testbed, host, url, "-f", "-H", f"Authorization: Bearer {token}")


def _curl_ok(testbed: Testbed, host: Host, url: str) -> bool:
    return _curl(testbed, host, url).returncode == 0


@dataclass(frozen=True)
class HostKill:
    """`kill(host)` SIGKILLs what runs on the host (its node) `at` seconds into the run; the
    host's client is stopped too, and the host no longer counts (it is not a failure)."""

    at: float
    hosts: list[Host]
    kill: Callable[[Host], None]


@dataclass
class HostJoin:
    """`start(host)` starts the host's node `at` seconds into the run; the host's command
    starts right after (it waits for its node to serve), and its time counts from the run's
    start, as every host's does."""

    at: float
    hosts: list[Host]
    start: Callable[[Host], None]


def run_at_once(
    testbed: Testbed,
    commands: dict[Host, list[str]],
    timeout: float,
    outcome: Outcome,
    progress: Progress,
    logs: Path,
    done_files: dict[Host, Path] | None = None,
    kills: list[HostKill] | None = None,
    joins: list[HostJoin] | None = None,
) -> None:
    """Start every host's command at the same moment; record when each finished.

    A host is done when its command exits 0, or (with `done_files`, for clients that keep
    running to serve others) when its done file appears; the file holds a Unix time. `kills`
    end hosts mid-run (churn); the hosts of `joins` start later.
    """
    kills = sorted(kills or [], key=lambda k: k.at)
    joins = sorted(joins or [], key=lambda j: j.at)
    later = {host for join in joins for host in join.hosts}
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[Host, subprocess.Popen[bytes]] = {}
    wall_start = time.time()
    start = outcome.started = time.monotonic()
    for host, argv in commands.items():
        if host not in later:
            procs[host] = testbed.spawn(host, argv, logs / f"{host.name}.log")
    pending = set(procs) | later
    deadline = start + timeout
    try:
        while pending and time.monotonic() < deadline:
            while joins and time.monotonic() - start >= joins[0].at:
                join = joins.pop(0)
                for host in join.hosts:
                    outcome.joined[host.name] = time.monotonic() - start
                    join.start(host)
                    procs[host] = testbed.spawn(host, commands[host], logs / f"{host.name}.log")
            while kills and time.monotonic() - start >= kills[0].at:
                kill = kills.pop(0)
                for host in kill.hosts:
                    kill.kill(host)
                    stop_process(procs[host])
                    outcome.killed[host.name] = time.monotonic() - start
                    outcome.done.pop(host.name, None)
                    outcome.errors.pop(host.name, None)
                    pending.discard(host)
            for host in list(pending):
                proc = procs.get(host)
                if proc is None:
                    continue  # joins later
                if done_files is not None and done_files[host].exists():
                    text = done_files[host].read_text().strip()
                    if text:
                        outcome.done[host.name] = float(text) - wall_start
                        pending.discard(host)
                        continue
                code = proc.poll()
                if code is None:
                    continue
                if done_files is None and code == 0:
                    outcome.done[host.name] = time.monotonic() - start
                else:
                    outcome.done[host.name] = None
                    tail = (logs / f"{host.name}.log").read_text(errors="replace")[-500:]
                    outcome.errors[host.name] = f"exited with {code}: {tail.strip()}"
                pending.discard(host)
            progress(
                f"{outcome.contender}: {len(commands) - len(pending)}/{len(commands)} hosts done, "
                f"{time.monotonic() - start:.1f}s"
            )
            time.sleep(0.05)
    finally:
        for host in pending:
            outcome.done[host.name] = None
            outcome.errors[host.name] = f"not done after {timeout:.0f}s"
        for proc in procs.values():
            stop_process(proc)


def _after_node_serves(command: list[str], timeout: float = 30.0) -> list[str]:
    """`command`, run once the host's pollen node answers (it has just been started); the
    host fails if the node does not serve within `timeout` seconds."""
    poll = "until curl -sf --max-time 1 -o /dev/null http://\\$1/healthz; do sleep 0.05; done"
    wait = (
        f'timeout {timeout:g} sh -c "{poll}" sh "$0" '
        f'|| {{ echo "the node did not serve within {timeout:g} s"; exit 1; }}; exec "$@"'
    )
    return ["sh", "-c", wait, POLLEN_HTTP, *command]


# How a host's client stores the image, and so how many blobs it reads at once: containers/image
# copies blobs in parallel (6 at a time) only to a destination whose PutBlob is safe to run
# concurrently; an OCI layout's is, a `dir:` directory's is not (HasThreadSafePutBlob false).
# containerd's CRI plugin, the kubelet's puller, fetches 3 at a time (max_concurrent_downloads).
CLIENTS = {
    "oci": "skopeo into an OCI layout, 6 blobs at a time",
    "dir": "skopeo into a dir: directory, one blob at a time",
    "ctr": "containerd (a private daemon per host) with `ctr images pull`, 3 blobs at a time as "
    "the kubelet's CRI plugin by default; a host is done when every blob is in, before the "
    "unpacking (skopeo and BitTorrent unpack nothing)",
}
CTR_DOWNLOADS = 3


def ctr_pull(socket: Path, ref: str, done_file: Path) -> list[str]:
    """`ctr images pull` of `ref` into the containerd at `socket`, 3 blobs at a time; when ctr
    says it begins to unpack (containerd 1.6's ctr fetches in the client, every blob checked,
    then prints `unpacking ...`), the Unix time goes to `done_file`, and ctr goes on unpacking
    until it ends or the run stops it. A ctr that fails, or ends without that line, writes
    nothing there: the host fails, with ctr's error in its log. On the run's SIGTERM to the
    group, bash waits for ctr before it exits, so ctr's CPU reaches the clients' count."""
    script = (
        "set -o pipefail\n"
        "trap 'wait; exit 143' TERM\n"
        f'ctr -a "$1" -n bench images pull --plain-http --max-concurrent-downloads {CTR_DOWNLOADS}'
        ' "$2" | {\n'
        "  if grep -m1 '^unpacking'; then date +%s.%N > \"$3\"\n"
        "  else echo 'ctr said nothing of unpacking: not every blob is known to be in'; fi\n"
        "  cat\n"
        "} &\n"
        "wait $!\n"
    )
    return ["bash", "-c", script, "ctr-pull", str(socket), ref, str(done_file)]


def skopeo_pull(source: str, dest: Path, tag: str, client: str = "oci") -> list[str]:
    """skopeo copying an image into an OCI layout (blobs already there are not fetched) or,
    `client` dir, into a directory (see CLIENTS)."""
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")
    target = f"oci:{dest}:{tag}" if client == "oci" else f"dir:{dest}"
    return [
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-oci-accept-uncompressed-layers",
        f"docker://{source}",
        target,
    ]


# ---- contenders ------------------------------------------------------------------------------


@dataclass
class Rollout:
    """What every contender shares: the testbed, the origin, the images, the limits."""

    testbed: Testbed
    origin: Origin
    workdir: Path
    timeout: float
    progress: Progress
    client: str = "oci"  # how each host's client stores the image (CLIENTS)
    timeline: float | None = None  # sample the links this often (seconds) while hosts fetch

    def measure(
        self,
        contender: str,
        prepare: Callable[[], None] | None,
        run: Callable[[Outcome], None],
        daemons: list[int] | None = None,
    ) -> Outcome:
        """`prepare` (untimed: e.g. hold the previous release), then measure `run`
        (`daemons`: PIDs of long-running processes whose CPU time is counted apart)."""
        if prepare is not None:
            prepare()
        outcome = Outcome(contender)
        # Before the CPU counters: its `ip netns exec` and `tc` calls are not the clients'.
        losses_before, outcome.losses_error = _read_losses(self.testbed)
        mark = self.origin.log_mark()
        wire = self.testbed.tx_bytes(self.testbed.origin)
        busy, total = cpu_jiffies()
        children = children_cpu_s()
        daemon_cpu = sum(process_cpu_s(pid) for pid in daemons or [])
        sampler = None
        if self.timeline is not None:
            sampler = LinkSampler(self.testbed.link_counters, self.timeline)
            sampler.start()
        try:
            run(outcome)
        finally:
            samples = sampler.stop() if sampler is not None else []
        if sampler is not None:
            if sampler.error is not None:
                outcome.timeline_error = f"{type(sampler.error).__name__}: {sampler.error}"
            else:
                # From when the hosts started, as their times are (BitTorrent's seeder and
                # tracker start first).
                shift = (outcome.started or sampler.started) - sampler.started
                hosts = [host.name for host in self.testbed.nodes]
                outcome.timeline = timeline_rows(samples, self.testbed.origin.name, hosts, shift)
        outcome.daemon_cpu_s = sum(process_cpu_s(pid) for pid in daemons or []) - daemon_cpu
        outcome.client_cpu_s = children_cpu_s() - children
        busy_after, total_after = cpu_jiffies()
        outcome.cpu_busy = (busy_after - busy) / max(1, total_after - total)
        outcome.origin_wire = self.testbed.tx_bytes(self.testbed.origin) - wire
        losses_after, error = _read_losses(self.testbed)
        if losses_before is not None and losses_after is not None:
            outcome.losses = losses_after - losses_before
        outcome.losses_error = outcome.losses_error or error
        if not outcome.origin_payload:
            outcome.origin_payload = self.origin.served_since(mark)
        return outcome

    def direct(self, tags: list[str]) -> Outcome:
        """Every host pulls straight from the registry (skopeo into its own layout)."""
        base = self.workdir / "direct"

        def pull(tag: str, outcome: Outcome) -> None:
            self._pull_all(f"{self.origin.address}/{REPOSITORY}:{tag}", tag, base, outcome)

        try:
            return self.measure(
                "direct",
                (lambda: _must(pull, tags[0], "direct")) if len(tags) > 1 else None,
                lambda outcome: pull(tags[-1], outcome),
            )
        finally:
            remove_data(base)

    def pollen(
        self,
        tags: list[str],
        extra_args: list[str] | None = None,
        kills: list[tuple[str, float]] | None = None,
        joins: list[tuple[int, float]] | None = None,
    ) -> Outcome:
        """A pollen node per host, joined by gossip; every host pulls through its own node
        (`extra_args` go to every `pollen run`, e.g. --piece-size 1MiB). `kills`: (COUNT or
        "owner", seconds): SIGKILL that many random hosts' nodes (or the node that owns the
        largest layer) that far into the timed pull. `joins`: (COUNT, seconds): the last
        hosts' nodes start that far into the timed pull (joining through the first host), and
        those hosts pull as soon as their node serves."""
        nodes = self.testbed.nodes
        base = self.workdir / "pollen"
        procs: list[subprocess.Popen[bytes]] = []
        token_file = base / "cluster.token"
        base.mkdir(parents=True, exist_ok=True)
        token_file.write_text(secrets.token_urlsafe(32))
        late = sum(count for count, _ in joins or [])
        if late >= len(nodes):
            raise RolloutError(f"{late} hosts join, of {len(nodes)}: the first must start")
        first = nodes[: len(nodes) - late]
        pids: list[int] = []  # grows as nodes join: their CPU counts from their start

        def start_node(host: Host) -> None:
            argv = self._node_argv(host, base, token_file, extra_args or [])
            (base / host.name).mkdir(parents=True, exist_ok=True)
            procs.append(self.testbed.spawn(host, argv, base / host.name / "pollen.log", cwd=REPO))
            pids.append(procs[-1].pid)

        try:
            for host in first:
                start_node(host)
            self._wait_converged(first, base)
            by_host = dict(zip(first, procs, strict=True))
            host_kills = self._host_kills(kills or [], by_host, base)
            host_joins, joining = [], iter(nodes[len(first) :])
            for count, at in joins or []:
                host_joins.append(HostJoin(at, list(itertools.islice(joining, count)), start_node))

            def pull(tag: str, outcome: Outcome) -> None:
                source = f"{POLLEN_HTTP}/{REPOSITORY}:{tag}"
                self._pull_all(source, tag, base, outcome, host_kills, host_joins)

            def warm_up(tag: str, outcome: Outcome) -> None:
                # Only the hosts that start at once hold the previous release.
                source = f"{POLLEN_HTTP}/{REPOSITORY}:{tag}"
                self._pull_all(source, tag, base, outcome, hosts=first)

            outcome = self.measure(
                "pollen",
                (lambda: _must(warm_up, tags[0], "pollen")) if len(tags) > 1 else None,
                lambda outcome: pull(tags[-1], outcome),
                daemons=pids,
            )
            for host in nodes:  # kept with the logs: what each node saw
                if host.name in outcome.killed:
                    continue
                status = _node_status(self.testbed, host, base)
                (base / host.name / "status.log").write_text(status.stdout)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    outcome.node_ids[host.name] = json.loads(status.stdout)["swarm"]["node_id"]
            return outcome
        finally:
            for proc in procs:
                stop_process(proc)
            remove_data(base)

    def _node_argv(
        self, host: Host, base: Path, token_file: Path, extra_args: list[str]
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "peer.cli",
            "run",
            "--http",
            POLLEN_HTTP,
            "--peer",
            f"{host.ip}:{PEER_PORT}",
            "--cluster-token-file",
            str(token_file),
            "--admin",
            POLLEN_ADMIN,
            "--data-dir",
            str(base / host.name / "store"),
            "--default-upstream",
            self.origin.url,
        ]
        first = self.testbed.nodes[0]
        if host != first:
            argv += ["--join", f"{first.ip}:{PEER_PORT}"]
        argv += ["--uplink", str(host.uplink)]  # as an operator declares each host's
        return argv + extra_args

    def _host_kills(
        self, kills: list[tuple[str, float]], procs: dict[Host, subprocess.Popen[bytes]], base: Path
    ) -> list[HostKill]:
        """Which hosts each kill ends: random ones (seeded: the same run, the same victims),
        or the owner of the largest layer (by the node ids, as every node computes it)."""
        rng = random.Random(0)
        alive = list(procs)
        out = []
        for what, at in kills:
            if what == "owner":
                ids = {}
                for host in alive:
                    status = json.loads(_node_status(self.testbed, host, base).stdout)
                    ids[bytes.fromhex(status["swarm"]["node_id"])] = host
                largest = max(self.origin.layers, key=lambda d: d[1])[0]
                declared = {node: host.uplink for node, host in ids.items()}  # --uplink
                victims = [ids[owner_order(largest, list(ids), declared)[0]]]
            else:
                victims = rng.sample(alive, min(int(what), len(alive)))
            alive = [h for h in alive if h not in victims]

            def kill(host: Host) -> None:
                proc = procs[host]
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):  # it just ended on its own
                        os.killpg(proc.pid, signal.SIGKILL)  # by its PID: the host dies
                    proc.wait(timeout=10)

            out.append(HostKill(at, victims, kill))
        return out

    def _pull_all(
        self,
        source: str,
        tag: str,
        base: Path,
        outcome: Outcome,
        kills: list[HostKill] | None = None,
        joins: list[HostJoin] | None = None,
        hosts: list[Host] | None = None,
    ) -> None:
        """Every node host (or those of `hosts`) copies `source` with its client (`client`:
        skopeo into a layout or a directory under `base`, or ctr into a containerd of its own,
        started for this pull and removed after it); a host of `joins` first waits for its
        node to serve."""
        hosts = hosts if hosts is not None else self.testbed.nodes
        joining = {host for join in joins or [] for host in join.hosts}
        commands = {}
        stores: dict[Host, Containerd] = {}
        done_files: dict[Host, Path] | None = {} if self.client == "ctr" else None
        try:
            for host in hosts:
                (base / host.name).mkdir(parents=True, exist_ok=True)
                if done_files is not None:
                    # Started before the clock: the kubelet's containerd is running already.
                    stores[host] = Containerd()
                    done_files[host] = base / host.name / f"done-{tag}"
                    command = ctr_pull(stores[host].socket, source, done_files[host])
                else:
                    command = skopeo_pull(source, base / host.name / self.client, tag, self.client)
                commands[host] = _after_node_serves(command) if host in joining else command
            logs = base / f"logs-{tag}"
            run_at_once(
                self.testbed,
                commands,
                self.timeout,
                outcome,
                self.progress,
                logs,
                done_files,
                kills,
                joins,
            )
        finally:
            # Stopped and waited for here (each, even when one fails to stop): their CPU
            # counts with the clients'.
            with contextlib.ExitStack() as closing:
                for store in stores.values():
                    closing.callback(store.close)

    def _wait_converged(self, nodes: list[Host], base: Path) -> None:
        def converged() -> bool:
            for host in nodes:
                answer = _node_status(self.testbed, host, base)
                if answer.returncode != 0:
                    return False
                members = json.loads(answer.stdout)["swarm"]["members"]
                if sum(1 for m in members if m["status"] == "alive") != len(nodes) - 1:
                    return False
            return True

        wait_until("pollen cluster membership", converged, CONVERGE_TIMEOUT)

    def bittorrent(self, images: list[Image]) -> Outcome:
        """aria2c on every host, seeded by aria2c on the origin, tracked by opentracker."""
        for tool in ("aria2c", "opentracker", "mktorrent"):
            if shutil.which(tool) is None:
                raise RolloutError(
                    f"bittorrent needs `{tool}`: apt-get install aria2 opentracker mktorrent"
                )
        base = self.workdir / "bittorrent"
        torrents = [self._make_torrent(base, image) for image in images]
        tracker_dir = base / "tracker"
        tracker_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(tracker_dir, 0o755)
        whitelist = tracker_dir / "whitelist"
        # opentracker drops its privileges (to nobody): the whitelist must be world-readable.
        whitelist.write_text("".join(info_hash(t) + "\n" for t, _ in torrents))
        os.chmod(whitelist, 0o644)
        origin = self.testbed.origin
        procs = [
            self.testbed.spawn(
                origin,
                [
                    "opentracker",
                    "-i",
                    origin.ip,
                    "-p",
                    str(TRACKER_PORT),
                    "-P",
                    str(TRACKER_PORT),
                    "-d",
                    ".",
                    "-w",
                    "whitelist",
                ],
                base / "tracker.log",
                cwd=tracker_dir,
            )
        ]
        try:
            wait_until(
                "opentracker",
                lambda: _curl_ok(self.testbed, origin, f"http://{origin.ip}:{TRACKER_PORT}/stats"),
                20,
                procs[0],
            )

            def share(index: int, outcome: Outcome) -> None:
                torrent, files = torrents[index]
                seeder = self.testbed.spawn(
                    origin,
                    [
                        *ARIA2_COMMON,
                        f"--dir={files.parent}",
                        "--seed-ratio=0.0",
                        "--bt-seed-unverified=true",
                        "--enable-rpc=true",
                        f"--rpc-listen-port={SEEDER_RPC}",
                        str(torrent),
                    ],
                    base / f"seeder-{index}.log",
                )
                procs.append(seeder)
                try:
                    wait_until(
                        "the seeder",
                        lambda: _seeder_uploaded(self.testbed, origin) is not None,
                        30,
                        seeder,
                    )
                    done_files = {h: base / f"done-{index}-{h.name}" for h in self.testbed.nodes}
                    commands = {}
                    for host in self.testbed.nodes:
                        done = done_files[host]
                        hook = base / f"hook-{index}-{host.name}.sh"
                        hook.write_text(f"#!/bin/sh\ndate +%s.%N > {done}\n")
                        hook.chmod(0o755)
                        commands[host] = [
                            *ARIA2_COMMON,
                            f"--dir={base / host.name}",
                            "--seed-ratio=0.0",
                            "--check-integrity=true",
                            f"--on-bt-download-complete={hook}",
                            str(torrent),
                        ]
                    run_at_once(
                        self.testbed,
                        commands,
                        self.timeout,
                        outcome,
                        self.progress,
                        base / f"logs-{index}",
                        done_files,
                    )
                    outcome.origin_payload = _seeder_uploaded(self.testbed, origin) or 0
                finally:
                    stop_process(seeder)

            return self.measure(
                "bittorrent",
                (lambda: _must(share, 0, "bittorrent")) if len(images) > 1 else None,
                lambda outcome: share(len(images) - 1, outcome),
            )
        finally:
            for proc in procs:
                stop_process(proc)
            remove_data(base)

    def _make_torrent(self, base: Path, image: Image) -> tuple[Path, Path]:
        """A multi-file torrent of the image's blobs (named by digest, as a registry has
        them), so hosts holding an earlier release already have the shared files."""
        files = base / f"seed-{image.tag}" / "blobs"
        files.mkdir(parents=True, exist_ok=True)
        for digest in image.blob_digests():
            source = image.layout / "blobs" / "sha256" / digest[7:]
            os.link(source, files / digest[7:])
        torrent = base / f"{image.tag}.torrent"
        announce = f"http://{self.testbed.origin.ip}:{TRACKER_PORT}/announce"
        # 1 MiB pieces (-l 20): what common clients pick for a file of a few hundred MiB.
        result = subprocess.run(
            [
                "mktorrent",
                "-a",
                announce,
                "-l",
                "20",
                "-n",
                "blobs",
                "-o",
                str(torrent),
                str(files),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RolloutError(f"mktorrent failed: {result.stderr.strip()}")
        return torrent, files


ARIA2_COMMON = [
    "aria2c",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--listen-port=6881",
    "--max-overall-upload-limit=0",
    "--bt-max-peers=55",
    "--allow-overwrite=false",
    "--auto-file-renaming=false",
]

_INFO_HASH = re.compile(r"Info Hash:\s*([0-9a-f]{40})")


def info_hash(torrent: Path) -> str:
    """The torrent's info-hash in hex, as aria2c shows it (`aria2c -S`)."""
    shown = subprocess.run(
        ["aria2c", "-S", str(torrent)], capture_output=True, text=True, timeout=60
    )
    match = _INFO_HASH.search(shown.stdout)
    if match is None:
        raise RolloutError(f"no info hash in `aria2c -S {torrent}`: {shown.stdout[-300:]}")
    return match.group(1)


def _seeder_uploaded(testbed: Testbed, origin: Host) -> int | None:
    """Payload bytes the seeder has uploaded (its RPC), None while it does not answer."""
    request = json.dumps(
        {"jsonrpc": "2.0", "id": "1", "method": "aria2.tellActive", "params": [["uploadLength"]]}
    )
    argv = testbed.command(
        origin,
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "-d",
            request,
            f"http://127.0.0.1:{SEEDER_RPC}/jsonrpc",
        ],
    )
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    if answer.returncode != 0:
        return None
    try:
        active = json.loads(answer.stdout)["result"]
    except (ValueError, KeyError):
        return None
    return sum(int(d["uploadLength"]) for d in active)


def remove_data(base: Path) -> None:
    """Remove what a contender stored (images, stores), keep its logs (with --workdir they
    stay for a look; a temporary workdir goes as a whole)."""
    for folder, _dirs, files in os.walk(base):
        for name in files:
            if not name.endswith(".log"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _must(run: Callable[[T, Outcome], None], what: T, contender: str) -> None:
    """Run an untimed preparation rollout; it must succeed on every host."""
    outcome = Outcome(f"{contender} (preparing)")
    run(what, outcome)
    if not outcome.complete:
        raise RolloutError(f"{contender}: preparing the previous release failed: {outcome.errors}")
