"""A testbed of network namespaces: one origin host and N node hosts on a shaped switch.

    switch namespace: bridge br0
      |-- origin  (10.213.0.1)   uplink shaped to --origin-uplink
      |-- node 1  (10.213.1.1)   uplink --uplink, downlink --downlink
      ...
      `-- node N  (10.213.1.N)

Each host is a namespace with a veth pair to the bridge. A host's uplink is shaped with a
`tbf` qdisc on its own end of the pair, its downlink with one on the switch's end (traffic
the bridge sends to it). Everything made here (namespaces, links, processes) is removed by
`close()`, which the context manager calls also on errors and Ctrl-C; namespace names carry
the process id, so two testbeds never collide and leftovers are easy to spot (`ip netns`).

Needs root, `ip` and `tc` (iproute2). Delay and loss would need the `netem` qdisc; where the
kernel has none, asking for them fails with a clear message instead of being ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.bound import payload_share
from bench.tcp_losses import Losses, qdisc_drops, qdisc_drops_by_device, tcp_segments

SUBNET = "10.213"


class TestbedError(Exception):
    """The testbed cannot be built here; the message says why and what to do."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True, slots=True)
class Host:
    name: str  # label in reports: origin, node1, ...
    netns: str
    ip: str
    uplink: int  # bytes per second
    downlink: int | None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result


def _tbf(netns: str, device: str, rate: int, where: str = "root") -> None:
    """Shape `device`'s egress to `rate` bytes/s (`where`: root, or under another qdisc).

    The bucket holds 10 ms at the rate but at least 128 KiB: veth hands the qdisc GSO packets
    of up to 64 KiB, and a bucket smaller than a packet would drop it."""
    burst = max(rate // 100, 128 * 1024)
    command = f"tc -n {netns} qdisc add dev {device} {where} tbf rate {rate * 8}bit"
    _run(*command.split(), "burst", str(burst), "latency", "50ms")


def _eth0(host: Host) -> dict[str, Any]:
    """What `ip` says of `host`'s link (its MTU, its counters: `-s`)."""
    out = _run("ip", "-n", host.netns, "-s", "-j", "link", "show", "dev", "eth0").stdout
    link: dict[str, Any] = json.loads(out)[0]
    return link


class Testbed:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        nodes: int,
        uplink: int,
        origin_uplink: int,
        downlink: int | None = None,
        rtt_ms: float | None = None,
        loss_percent: float | None = None,
        slow: tuple[int, int] = (0, 0),  # the last COUNT node hosts upload at RATE instead
    ) -> None:
        if nodes < 1 or nodes > 200:
            raise TestbedError("between 1 and 200 nodes")
        slow_count, slow_rate = slow
        self.prefix = f"pb{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.origin = Host("origin", f"{self.prefix}-o", f"{SUBNET}.0.1", origin_uplink, None)
        self.nodes = [
            Host(
                f"node{i}",
                f"{self.prefix}-n{i}",
                f"{SUBNET}.1.{i}",
                slow_rate if i > nodes - slow_count else uplink,
                downlink,
            )
            for i in range(1, nodes + 1)
        ]
        self.rtt_ms = rtt_ms
        self.loss_percent = loss_percent
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._switch_ports: dict[str, str] = {}  # host name -> its link's end on the switch

    @property
    def hosts(self) -> list[Host]:
        return [self.origin, *self.nodes]

    # ---- building and tearing down -------------------------------------------------------

    def __enter__(self) -> Testbed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def build(self) -> None:
        if os.geteuid() != 0:
            raise TestbedError("the testbed creates network namespaces: run it as root")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise TestbedError(f"`{tool}` is missing: apt-get install iproute2")
        self._add_namespace(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        if self.rtt_ms is not None or self.loss_percent is not None:
            self._check_netem()
        for index, host in enumerate(self.hosts):
            self._add_host(index, host)

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _check_netem(self) -> None:
        probe = _run(
            "tc",
            "-n",
            self.switch,
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
            check=False,
        )
        if probe.returncode != 0:
            raise TestbedError(
                "--rtt and --loss need the netem qdisc, and this kernel has none "
                f"(tc said: {probe.stderr.strip()}). Rates can still be shaped (tbf); "
                "run without --rtt/--loss, or on a kernel with sch_netem."
            )
        _run("tc", "-n", self.switch, "qdisc", "del", "dev", "lo", "root")

    def _add_host(self, index: int, host: Host) -> None:
        self._add_namespace(host.netns)
        inside, outside = f"{self.prefix}v{index}a", f"{self.prefix}v{index}b"
        _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        _run("ip", "link", "set", inside, "netns", host.netns)
        _run("ip", "link", "set", outside, "netns", self.switch)
        _run("ip", "-n", host.netns, "link", "set", inside, "name", "eth0")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/16", "dev", "eth0")
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        self._switch_ports[host.name] = outside
        _run("ip", "-n", self.switch, "link", "set", outside, "master", "br0")
        _run("ip", "-n", self.switch, "link", "set", outside, "up")
        if self.rtt_ms is not None or self.loss_percent is not None:
            # netem on each host's uplink: half the round trip each way, loss on the way out;
            # the rate limit goes under it.
            netem = f"tc -n {host.netns} qdisc add dev eth0 root handle 1: netem".split()
            if self.rtt_ms is not None:
                netem += ["delay", f"{self.rtt_ms / 2}ms"]
            if self.loss_percent is not None:
                netem += ["loss", f"{self.loss_percent}%"]
            _run(*netem)
            _tbf(host.netns, "eth0", host.uplink, "parent 1:1 handle 10:")
        else:
            _tbf(host.netns, "eth0", host.uplink)
        if host.downlink is not None:
            _tbf(self.switch, outside, host.downlink)

    def close(self) -> None:
        """Stop every process started here and remove every namespace (and so every link)."""
        for proc in self._procs:
            stop_process(proc)
        self._procs.clear()
        for name in reversed(self._namespaces):
            _run("ip", "netns", "del", name, check=False)
        self._namespaces.clear()

    # ---- running things on hosts ---------------------------------------------------------

    def spawn(
        self,
        host: Host,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process on `host`; `close()` stops it."""
        out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the process
        try:
            with _signals_held():
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", host.netns, *argv],
                    stdout=out,
                    stderr=out,
                    env={**os.environ, **(env or {})},
                    cwd=cwd,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
                self._procs.append(proc)
        finally:
            out.close()
        return proc

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` run on `host` (for subprocess calls the caller times itself)."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def congestion_control(self, host: Host) -> str:
        """The TCP congestion control of `host`'s connections that choose none (each namespace
        has its own setting, a new one the machine's): aria2c's, skopeo's, the registry's."""
        path = "/proc/sys/net/ipv4/tcp_congestion_control"
        return _run("ip", "netns", "exec", host.netns, "cat", path).stdout.strip()

    def payload_share(self, host: Host) -> float:
        """The share of `host`'s shaped rates that a full TCP segment's payload is, from its
        link's MTU and whether its TCP puts timestamps in every segment (bench/bound.py)."""
        timestamps = _run(*self.command(host, ["cat", "/proc/sys/net/ipv4/tcp_timestamps"]))
        return payload_share(int(_eth0(host)["mtu"]), timestamps.stdout.strip() != "0")

    def tx_bytes(self, host: Host) -> int:
        """Bytes `host` has sent on its link so far."""
        return int(_eth0(host)["stats64"]["tx"]["bytes"])

    def link_counters(self) -> dict[str, tuple[int, int, int]]:
        """Every host's (bytes sent, bytes received, packets its downlink's shaper dropped)
        so far, read from the switch's ends of their links (what the switch received from a
        host is what the host sent; a host without a shaped downlink, the origin, drops 0)."""
        out = _run("ip", "-n", self.switch, "-s", "-j", "link", "show").stdout
        stats = {link["ifname"]: link["stats64"] for link in json.loads(out)}
        qdiscs = _run("tc", "-n", self.switch, "-s", "-j", "qdisc", "show").stdout
        drops = qdisc_drops_by_device(qdiscs)
        return {
            host: (
                int(stats[port]["rx"]["bytes"]),
                int(stats[port]["tx"]["bytes"]),
                drops.get(port, 0),
            )
            for host, port in self._switch_ports.items()
        }

    def losses(self) -> Losses:
        """What TCP retransmitted and the shapers dropped so far, summed over every host
        (bench/tcp_losses.py): /proc/net/snmp and each host's `tc -s`, then the switch's."""
        total = Losses()
        for host in self.hosts:
            snmp = _run(*self.command(host, ["cat", "/proc/net/snmp"])).stdout
            segments, retransmitted = tcp_segments(snmp)
            uplink = _run("tc", "-n", host.netns, "-s", "-j", "qdisc", "show", "dev", "eth0")
            total += Losses(segments, retransmitted, uplink_drops=qdisc_drops(uplink.stdout))
        switch = _run("tc", "-n", self.switch, "-s", "-j", "qdisc", "show").stdout
        return total + Losses(downlink_drops=qdisc_drops(switch))

    def rx_bytes(self, host: Host) -> int:
        return int(_eth0(host)["stats64"]["rx"]["bytes"])


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and Ctrl-C unwind a run as an exception; raised inside Popen after the fork,
    it would leave a child that nobody knows of, so they are held until the child is
    recorded, then re-delivered. (Recorded by a handler, not blocked or ignored: children
    inherit a blocked mask and ignored signals across exec, but not handlers.)"""
    stops = (signal.SIGTERM, signal.SIGINT)
    held: list[int] = []
    try:
        previous = [signal.signal(s, lambda signum, _frame: held.append(signum)) for s in stops]
    except ValueError:  # not the main thread: signals go to the main thread anyway
        yield
        return
    try:
        yield
    finally:
        for s, handler in zip(stops, previous, strict=True):
            signal.signal(s, handler)
        for signum in held[:1]:
            os.kill(os.getpid(), signum)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def leftover_namespaces() -> list[str]:
    """Namespaces of testbeds whose process is gone (e.g. SIGKILLed): `pollen bench swarm
    --cleanup` removes them."""
    out = _run("ip", "-j", "netns", "list", check=False).stdout or "[]"
    names = [entry["name"] for entry in json.loads(out)]
    stale = []
    for name in names:
        if not name.startswith("pb") or "-" not in name:
            continue
        pid = name[2:].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.append(name)
    return stale


def remove_namespaces(names: list[str]) -> None:
    for name in names:
        _run("ip", "netns", "del", name, check=False)
