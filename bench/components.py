"""Real components for integration tests and benchmarks, each started on loopback and always
stopped: docker-registry, a `pollen run` process, containerd, and a throttling TCP proxy."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_BLOB_GET = re.compile(
    r'"GET /v2/([^ ]+)/blobs/(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})[^ ]* HTTP/1\.1" (\d+) (\d+)'
)


# The harness picks ports below the kernel's ephemeral range: an outgoing connection (the
# tests open thousands) takes its local port from that range, and one that took a picked port
# before the node bound it ended the node at start ("Address already in use", CI 2026-11-29).
PICK_PORTS_FROM = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_pick = random.SystemRandom()  # not the global one, which hypothesis seeds


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux default if unknown)."""
    try:
        low, high = map(int, _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port(ip: str = "127.0.0.1", avoid: Sequence[int] = ()) -> int:
    """A port free for both TCP and UDP on `ip` (the peer port serves both), outside the
    ephemeral range and not in `avoid` (ports picked for the same process, not bound yet)."""
    low, _ = ephemeral_ports()
    below = max(low, PICK_PORTS_FROM + 1000)
    for _ in range(200):
        port = _pick.randrange(PICK_PORTS_FROM, below)
        if port not in avoid and _bindable(ip, port):
            return port
    raise RuntimeError(f"no free port on {ip} in {PICK_PORTS_FROM}..{below - 1}")


def free_ports(count: int, ip: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (see free_port), for one process's listeners."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(ip, avoid=ports))
    return ports


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            tcp.bind((ip, port))
            udp.bind((ip, port))
        except OSError:
            return False
    return True


class Cluster:
    """N pollen processes on 127.0.0.{first}..., joined through the first; always stopped."""

    def __init__(
        self,
        workdir: Path,
        count: int,
        *args: str,
        first_ip: int = 11,
        env: dict[int, dict[str, str]] | None = None,
        modules: dict[int, str] | None = None,
    ) -> None:
        """`modules`: node index -> the module to run instead of `peer.cli` (a test's lying
        node, say)."""
        self.nodes: list[Pollen] = []
        try:
            for i in range(count):
                join = ("--join", self.nodes[0].peer) if self.nodes else ()
                node = Pollen(
                    workdir / f"node{i}",
                    *args,
                    *join,
                    ip=f"127.0.0.{first_ip + i}",
                    env=(env or {}).get(i),
                    module=(modules or {}).get(i, "peer.cli"),
                )
                self.nodes.append(node)
        except BaseException:
            self.stop()
            raise

    def wait_converged(self, timeout: float = 60) -> None:
        expected = len(self.nodes) - 1
        wait_for(
            "cluster membership",
            lambda: all(n.alive_members() == expected for n in self.nodes if n.running),
            timeout=timeout,
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def wait_for(
    what: str, check: Any, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def registry_config(workdir: Path, addr: str, htpasswd: Path | None = None) -> Path:
    """A docker-registry config: storage under `workdir`, listening on `addr`, access log on."""
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: pollen-test\n    path: {htpasswd}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        f"http:\n  addr: {addr}\n" + auth
    )
    return config


_SERVED = re.compile(r'"GET /v2/[^"]+ HTTP/1\.1" (?:200|206) (\d+)')


def registry_bytes_served(log_text: str) -> int:
    """Body bytes of every successful GET in a docker-registry access log."""
    return sum(int(m.group(1)) for m in _SERVED.finditer(log_text))


class Registry:
    """docker-registry on 127.0.0.1 with its access log in a file we can count blob GETs in."""

    def __init__(self, workdir: Path, htpasswd: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "registry.log"
        self._config = registry_config(workdir, self.host, htpasswd)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self._config)], stdout=log, stderr=log
        )
        log.close()
        wait_for("docker-registry", lambda: http_ok(self.url + "/v2/"), proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    def blob_copies(self, since: int = 0) -> dict[str, float]:
        """How many times each blob's bytes were served since a log mark, by digest: the body
        bytes of its GETs answered 200 or 206 over its size. 1 for a blob fetched once, in one
        answer or in chunks (a large blob comes in Range requests); 2 for twice."""
        served: collections.Counter[str] = collections.Counter()
        sizes: dict[str, int] = {}
        for repo, digest, status, length in self._blob_gets(since):
            if status in (200, 206):
                served[digest] += length
                if digest not in sizes:  # (a blob in chunks has several answers)
                    sizes[digest] = self.blob_size(repo, digest)
        return {digest: count / sizes[digest] for digest, count in served.items()}

    def blob_statuses(self, since: int = 0) -> dict[str, list[int]]:
        """The status of every answer to a blob GET since a log mark, by digest, in order."""
        statuses: dict[str, list[int]] = collections.defaultdict(list)
        for _repo, digest, status, _length in self._blob_gets(since):
            statuses[digest].append(status)
        return dict(statuses)

    def _blob_gets(self, since: int) -> Iterator[tuple[str, str, int, int]]:
        """(repository, digest, status, body bytes) of each blob GET logged since a mark."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        for m in _BLOB_GET.finditer(text):
            repo, digest, status, length = m.groups()
            yield repo, digest, int(status), int(length)

    def blob_size(self, repo: str, digest: str) -> int:
        """The size of a blob of `repo` as this registry stores it. (Its filesystem layout:
        the repository links each digest to the content's sha256, under which it is kept.)"""
        v2 = self.workdir / "data" / "docker" / "registry" / "v2"
        algorithm, hex_ = digest.split(":", 1)
        link = v2 / "repositories" / repo / "_layers" / algorithm / hex_ / "link"
        algorithm, hex_ = link.read_text().strip().split(":", 1)
        return (v2 / "blobs" / algorithm / hex_[:2] / hex_ / "data").stat().st_size

    def push(self, layout: Path, tag: str, repo: str, creds: str | None = None) -> dict[str, Any]:
        """skopeo-copy an OCI layout in; return the manifest as stored by the registry."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if creds:
            cmd += ["--dest-creds", creds]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}:{tag}"]
        subprocess.run(cmd, check=True, timeout=300)
        return self.manifest(repo, tag, creds)

    def manifest(self, repo: str, tag: str, creds: str | None = None) -> dict[str, Any]:
        """The manifest of `repo:tag` as the registry stores it (skopeo inspect --raw)."""
        inspect = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
        if creds:
            inspect += ["--creds", creds]
        raw = subprocess.run(
            [*inspect, f"docker://{self.host}/{repo}:{tag}"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        manifest: dict[str, Any] = json.loads(raw)
        return manifest


class Pollen:
    """A real `pollen run` process on `ip` (each node of a cluster gets its own 127.0.0.N)."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        data_dir: Path | None = None,
        ip: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        module: str = "peer.cli",
        peer_port: int | None = None,
        prefix: Sequence[str] = (),  # a command that execs the node (unshare, say)
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ip = ip
        self.port, self.admin_port = free_ports(2, ip)
        self.peer_port = peer_port or free_port(ip, avoid=[self.port, self.admin_port])
        self.url = f"http://{ip}:{self.port}"
        self.admin_url = f"http://{ip}:{self.admin_port}"
        self.host = f"{ip}:{self.port}"
        self.peer = f"{ip}:{self.peer_port}"
        self.data_dir = data_dir or workdir / "store"
        self.log_path = workdir / "pollen.log"
        self.env = {**os.environ, **(env or {})}
        self.args = [
            *prefix,
            sys.executable,
            "-m",
            module,
            "run",
            "--http",
            self.host,
            "--peer",
            self.peer,
            "--admin",
            f"{ip}:{self.admin_port}",
            "--data-dir",
            str(self.data_dir),
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def node_id(self) -> str:
        node_id: str = self.status()["swarm"]["node_id"]
        return node_id

    def alive_members(self) -> int:
        return sum(1 for m in self.status()["swarm"]["members"] if m["status"] == "alive")

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, cwd=REPO, env=self.env)
        log.close()
        wait_for("pollen", lambda: http_ok(self.url + "/healthz"), proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def admin_request(self, path: str, method: str = "GET") -> urllib.request.Request:
        """A request to the node's admin API, with the token the node keeps in its store."""
        token = (self.data_dir / "admin.token").read_text().strip()
        return urllib.request.Request(
            self.admin_url + path, method=method, headers={"Authorization": f"Bearer {token}"}
        )

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin_request("/_pollen/status"), timeout=5) as response:
            doc: dict[str, Any] = json.load(response)
            return doc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Containerd:
    """A private containerd (own config, root, state, socket) with a hosts.toml mirror dir.

    With `cri`, its CRI plugin runs too (the kubelet's pull path: the same socket serves the
    CRI API), with `hosts_dir` as its registry config_path, the native snapshotter (no
    overlay mounts needed), no CNI and no TCP streaming service."""

    def __init__(self, cri: bool = False) -> None:
        # Unix socket paths must stay short: use a short temp dir, not pytest's deep one.
        self.dir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
        self.socket = self.dir / "containerd.sock"
        self.hosts_dir = self.dir / "hosts"
        self.hosts_dir.mkdir()
        config = self.dir / "config.toml"
        if cri:
            plugin = (
                '[plugins."io.containerd.grpc.v1.cri"]\n'
                "  disable_tcp_service = true\n"
                '  stream_server_address = "127.0.0.1"\n'
                '  stream_server_port = "0"\n'
                '  [plugins."io.containerd.grpc.v1.cri".containerd]\n'
                '    snapshotter = "native"\n'
                '  [plugins."io.containerd.grpc.v1.cri".cni]\n'
                f'    bin_dir = "{self.dir / "cni-bin"}"\n'
                f'    conf_dir = "{self.dir / "cni-conf"}"\n'
                '  [plugins."io.containerd.grpc.v1.cri".registry]\n'
                f'    config_path = "{self.hosts_dir}"\n'
            )
        else:
            plugin = '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n'
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.dir / "ttrpc.sock"}"\n' + plugin
        )
        self.log_path = self.dir / "containerd.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        try:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=log
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        finally:
            log.close()
        try:
            wait_for(
                "containerd",
                lambda: self.ctr("version", check=False).returncode == 0,
                proc=self.proc,
            )
        except BaseException:  # it never served, or the run was stopped: leave nothing behind
            self.close()
            raise

    def mirror(self, registry_host: str, registry_url: str, mirror_url: str) -> None:
        """Point pulls of `registry_host` at `mirror_url` first (containerd falls back to it)."""
        write_hosts_toml(self.hosts_dir, registry_host, registry_url, mirror_url)

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", "pollen-test", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def pull(self, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.ctr("images", "pull", "--hosts-dir", str(self.hosts_dir), *extra, ref)

    def content_digests(self) -> set[str]:
        out = self.ctr("content", "ls", "-q").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def close(self) -> None:
        stop(self.proc)
        # Unpacked snapshots may hold mounts under root; unmount before removing.
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def write_hosts_toml(
    hosts_dir: Path, registry_host: str, registry_url: str, mirror_url: str | None
) -> None:
    """containerd's hosts.toml for `registry_host` in `hosts_dir`: `mirror_url` first (when
    given), then the registry itself."""
    folder = hosts_dir / registry_host
    folder.mkdir(parents=True, exist_ok=True)
    text = f'server = "{registry_url}"\n'
    if mirror_url is not None:
        text += f'\n[host."{mirror_url}"]\n  capabilities = ["pull", "resolve"]\n'
    (folder / "hosts.toml").write_text(text)


def unmount_under(folder: Path) -> None:
    """Unmount (lazily, deepest first) everything mounted below `folder`."""
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        target = line.split()[1]
        if target.startswith(str(folder)):
            subprocess.run(["umount", "-l", target], check=False)


def env_without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
