"""`pollen bench pull`: time real pulls of one image, K times, the way operators do by hand.

Before every run the image is removed and unused content pruned, so each run is a real pull
(and with --flush, pollen's cache is emptied too: a cold run). With two --via settings the runs
alternate A B A B, so the noise of the machine falls on both alike.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bench.components import Containerd, write_hosts_toml
from bench.cri import CriError, ImageService
from peer.config import default_data_dir
from peer.front.admin import ADMIN_TOKEN_FILE
from peer.sizes import format_size

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
PULL_TIMEOUT = 3600


class PullBenchError(Exception):
    """The benchmark cannot run as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Reference:
    """`HOST[:PORT]/REPO:TAG` of the image under test."""

    host: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Reference:
        host, _, rest = text.partition("/")
        repository, _, tag = rest.rpartition(":")
        if not host or not repository or not tag or "/" in tag:
            raise PullBenchError(f"{text!r}: give the image as HOST[:PORT]/REPO:TAG")
        return cls(host, repository, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True)
class Setting:
    """How pulls go: `direct` to the registry, or through a mirror URL."""

    name: str
    mirror: str | None

    @classmethod
    def parse(cls, text: str) -> Setting:
        name, sep, url = text.partition("=")
        if not sep:
            if text != "direct":
                raise PullBenchError(f"{text!r}: use NAME=MIRROR_URL, or direct")
            return cls("direct", None)
        if url == "direct":
            return cls(name, None)
        if not url.startswith(("http://", "https://")):
            raise PullBenchError(f"{text!r}: the mirror must be an http(s):// URL")
        return cls(name, url.rstrip("/"))


def image_bytes(ref: Reference, scheme: str) -> int:
    """Config + layers of the image (the linux/amd64 one of an index), from the registry."""

    def get(reference: str) -> dict[str, Any]:
        url = f"{scheme}://{ref.host}/v2/{ref.repository}/manifests/{reference}"
        request = urllib.request.Request(url, headers={"Accept": ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                document: dict[str, Any] = json.load(response)
                return document
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PullBenchError(f"cannot read the manifest of {ref} at {url}: {exc}") from exc

    manifest = get(ref.tag)
    if "manifests" in manifest:
        chosen = next(
            (
                m
                for m in manifest["manifests"]
                if m.get("platform", {}).get("architecture") in ("amd64", None)
            ),
            manifest["manifests"][0],
        )
        manifest = get(chosen["digest"])
    return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])


class PullFailed(Exception):
    """One pull failed (the message says how)."""


class Driver:
    """A pull client: `prepare` once, `clean` before each run, `pull` timed."""

    name = ""

    def prepare(self, settings: list[Setting]) -> None:
        """Set up what the settings need (hosts.toml, registries.conf)."""

    def clean(self, ref: Reference) -> None:
        raise NotImplementedError

    def pull(self, ref: Reference, setting: Setting) -> None:
        """One pull, the client's command run to its end.

        Raises:
            PullFailed: the client failed, is missing, or took over PULL_TIMEOUT.
        """
        command = self.pull_command(ref, setting)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PULL_TIMEOUT)
        except FileNotFoundError as exc:
            raise PullFailed(f"{command[0]} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise PullFailed(f"no result after {PULL_TIMEOUT}s") from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-500:]
            raise PullFailed(f"exit {result.returncode}: {output}")

    def pull_command(self, ref: Reference, setting: Setting) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what `prepare` started."""


class CtrDriver(Driver):
    """containerd's ctr with a hosts directory per setting (or a given containerd socket)."""

    name = "ctr"

    def __init__(self, socket: Path | None, namespace: str, scheme: str) -> None:
        self.scheme = scheme
        self.namespace = namespace
        self._own: Containerd | None = None
        if socket is None:
            self._own = Containerd()  # a private containerd: own root, state and socket
            socket = self._own.socket
        self.socket = socket
        self._dir = Path(tempfile.mkdtemp(prefix="pollen-bench-pull-"))

    def prepare(self, settings: list[Setting]) -> None:
        self._settings = settings

    def hosts_dir(self, ref: Reference, setting: Setting) -> Path:
        """A hosts.toml for the registry: the mirror first (if any), then the registry."""
        folder = self._dir / setting.name
        write_hosts_toml(folder, ref.host, f"{self.scheme}://{ref.host}", setting.mirror)
        return folder

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", str(self.socket), "-n", self.namespace, *args]

    def clean(self, ref: Reference) -> None:
        # Removing the image with --sync runs containerd's garbage collection at once: the
        # content and snapshots only the image referenced go with it.
        subprocess.run(self.ctr("images", "rm", "--sync", str(ref)), capture_output=True)
        left = subprocess.run(self.ctr("content", "ls", "-q"), capture_output=True, text=True)
        if left.stdout.strip() and self._own is not None:
            raise PullBenchError(f"content left after removing {ref}: {left.stdout[:300]}")

    def pull_command(self, ref: Reference, setting: Setting) -> list[str]:
        hosts = self.hosts_dir(ref, setting)
        return self.ctr("images", "pull", "--hosts-dir", str(hosts), str(ref))

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class CrictlDriver(Driver):
    """crictl against a CRI endpoint; pulls go wherever the runtime's registry config says."""

    name = "crictl"

    def __init__(self, endpoint: str | None) -> None:
        if shutil.which("crictl") is None:
            raise PullBenchError("crictl is not on PATH (it comes with cri-tools)")
        self.base = ["crictl"] + (["--runtime-endpoint", endpoint] if endpoint else [])

    def prepare(self, settings: list[Setting]) -> None:
        if any(s.mirror is not None for s in settings) or len(settings) > 1:
            raise PullBenchError(
                "crictl pulls through the runtime's own registry config, which this tool does "
                "not change: compare mirrors with --driver ctr or --driver skopeo"
            )

    def clean(self, ref: Reference) -> None:
        subprocess.run([*self.base, "rmi", str(ref)], capture_output=True)
        subprocess.run([*self.base, "rmi", "--prune"], capture_output=True)

    def pull_command(self, ref: Reference, setting: Setting) -> list[str]:
        return [*self.base, "pull", str(ref)]


class CriDriver(Driver):
    """The kubelet's path: a private containerd with its CRI plugin, asked over the CRI API
    (PullImage, RemoveImage: `crictl pull`, `crictl rmi --prune`). Its config_path holds one
    hosts.toml per registry, rewritten for the setting before each pull (containerd reads it
    at every pull)."""

    name = "cri"

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self._containerd = Containerd(cri=True)
        self._images = ImageService(self._containerd.socket, timeout=PULL_TIMEOUT)

    def clean(self, ref: Reference) -> None:
        try:
            # The CRI plugin deletes synchronously: the content and snapshots only this
            # image used go at once (what `crictl rmi --prune` leaves).
            self._images.remove(str(ref))
        except CriError as exc:
            raise PullBenchError(f"cannot remove {ref} before a cold run: {exc}") from exc
        ctr = ["ctr", "-a", str(self._containerd.socket), "-n", "k8s.io", "content", "ls", "-q"]
        left = subprocess.run(ctr, capture_output=True, text=True)
        if left.stdout.strip():
            raise PullBenchError(f"content left after removing {ref}: {left.stdout[:300]}")

    def pull(self, ref: Reference, setting: Setting) -> None:
        registry_url = f"{self.scheme}://{ref.host}"
        write_hosts_toml(self._containerd.hosts_dir, ref.host, registry_url, setting.mirror)
        try:
            self._images.pull(str(ref))
        except CriError as exc:
            raise PullFailed(str(exc)) from exc

    def close(self) -> None:
        self._images.close()
        self._containerd.close()


class SkopeoDriver(Driver):
    """skopeo copy into a temporary directory; a mirror goes in a registries.conf."""

    name = "skopeo"

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="pollen-bench-pull-"))

    def registries_conf(self, ref: Reference, setting: Setting) -> Path:
        path = self._dir / f"{setting.name}.conf"
        text = f'[[registry]]\nlocation = "{ref.host}"\ninsecure = {str(not self.tls).lower()}\n'
        if setting.mirror is not None:
            mirror = setting.mirror.split("://", 1)[1]
            insecure = str(setting.mirror.startswith("http://")).lower()
            text += f'\n[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = {insecure}\n'
        path.write_text(text)
        return path

    def clean(self, ref: Reference) -> None:
        shutil.rmtree(self._dir / "image", ignore_errors=True)

    def pull_command(self, ref: Reference, setting: Setting) -> list[str]:
        conf = self.registries_conf(ref, setting)
        return [
            "skopeo",
            "--registries-conf",
            str(conf),
            "copy",
            "--quiet",
            f"--src-tls-verify={str(self.tls).lower()}",
            f"docker://{ref}",
            f"dir:{self._dir / 'image'}",
        ]

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class Admin:
    """A pollen node's admin API (its --admin address) and its token."""

    url: str
    token: str

    def request(self, path: str, method: str = "GET") -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self.token}"}
        return urllib.request.Request(self.url + path, method=method, headers=headers)


def parse_admins(
    admins: tuple[str, ...], token_files: tuple[str, ...], names: set[str]
) -> dict[str, Admin]:
    """`--admin NAME=URL` and `--admin-token-file NAME=FILE` by setting name (the token
    defaults to the default data directory's admin.token)."""
    files: dict[str, Path] = {}
    for text in token_files:
        name, sep, path = text.partition("=")
        if not sep or name not in names:
            raise PullBenchError(f"--admin-token-file {text!r}: use NAME=FILE for a --via NAME")
        files[name] = Path(path)
    out: dict[str, Admin] = {}
    for text in admins:
        name, sep, url = text.partition("=")
        if not sep or name not in names or not url.startswith(("http://", "https://")):
            raise PullBenchError(f"--admin {text!r}: use NAME=http://ADDR:PORT for a --via NAME")
        token_file = files.get(name, default_data_dir() / ADMIN_TOKEN_FILE)
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise PullBenchError(f"cannot read the admin token {token_file}: {exc}") from exc
        out[name] = Admin(url.rstrip("/"), token)
    return out


def flush_mirror(admin: Admin) -> None:
    """Empty a pollen node's cache (DELETE /_pollen/cache on its admin API)."""
    try:
        with urllib.request.urlopen(admin.request("/_pollen/cache", "DELETE"), timeout=60) as r:
            r.read()
    except (urllib.error.URLError, OSError) as exc:
        raise PullBenchError(f"cannot flush the cache of {admin.url}: {exc}") from exc


def mirror_served(admin: Admin) -> int:
    """Blob bytes a pollen node has served to its clients so far."""
    try:
        with urllib.request.urlopen(admin.request("/_pollen/status"), timeout=10) as response:
            served = json.load(response)["served"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise PullBenchError(f"cannot read the status of {admin.url}: {exc}") from exc
    return int(served["blob_bytes_from_cache"]) + int(served["blob_bytes_while_downloading"])


def timed(pull: Callable[[], None], label: str, show: bool) -> tuple[float, str | None]:
    """Run `pull`; (seconds, None) on success or (seconds, error) on failure."""
    started = time.monotonic()
    done = threading.Event()

    def progress() -> None:
        while not done.wait(0.5):
            sys.stderr.write(f"\r\033[K{label} {time.monotonic() - started:6.1f}s")
            sys.stderr.flush()

    ticker = threading.Thread(target=progress, daemon=True)
    if show:
        ticker.start()
    error = None
    try:
        pull()
    except PullFailed as exc:
        error = str(exc)
    finally:
        done.set()
        if show:
            ticker.join()
            sys.stderr.write("\r\033[K")
    return time.monotonic() - started, error


def stats(seconds: list[float], size: int) -> dict[str, float]:
    return {
        "min_s": round(min(seconds), 3),
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "median_mb_per_s": round(size / statistics.median(seconds) / 1e6, 1),
    }


@click.command()
@click.argument("image")
@click.option(
    "--driver",
    type=click.Choice(["ctr", "cri", "crictl", "skopeo"]),
    default="ctr",
    show_default=True,
    help="The client that pulls. cri: the kubelet's path, a private containerd's CRI plugin "
    "asked over the CRI API (no crictl needed).",
)
@click.option("--runs", default=5, show_default=True, help="Timed pulls per setting.")
@click.option(
    "--via",
    "vias",
    multiple=True,
    metavar="NAME=URL|direct",
    help="A mirror setting; give two to compare them (runs alternate A B A B). "
    "`direct` pulls from the registry itself [default: direct].",
)
@click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="NAME=URL",
    help="The admin API (--admin address) of the pollen node behind --via NAME: needed by "
    "--flush, and to check that every pull really went through the node.",
)
@click.option(
    "--admin-token-file",
    "admin_token_files",
    multiple=True,
    metavar="NAME=FILE",
    help="That node's admin token [default: ~/.cache/pollen/admin.token].",
)
@click.option(
    "--flush",
    is_flag=True,
    help="Empty each pollen mirror's cache before every run (cold pulls; needs --admin).",
)
@click.option(
    "--containerd-socket",
    type=click.Path(path_type=Path),
    help="ctr: use this containerd [default: start a private one].",
)
@click.option(
    "--namespace",
    default="pollen-bench",
    show_default=True,
    help="ctr: the containerd namespace to pull into.",
)
@click.option("--runtime-endpoint", help="crictl: the CRI endpoint.")
@click.option("--tls", is_flag=True, help="The registry speaks https (default: plain http).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every run and the summary as JSON here.",
)
def pull(
    image: str,
    driver: str,
    runs: int,
    vias: tuple[str, ...],
    admins: tuple[str, ...],
    admin_token_files: tuple[str, ...],
    flush: bool,
    containerd_socket: Path | None,
    namespace: str,
    runtime_endpoint: str | None,
    tls: bool,
    json_path: Path | None,
) -> None:
    """Time K real pulls of IMAGE (HOST[:PORT]/REPO:TAG), cleaning up before each.

    \b
    Examples:
      pollen bench pull 127.0.0.1:5000/bench/app:latest --via pollen=http://127.0.0.1:65001
      pollen bench pull 127.0.0.1:5000/bench/app:latest --runs 10 \\
          --via pollen=http://127.0.0.1:65001 --admin pollen=http://127.0.0.1:65003 \\
          --via direct --flush --json ab.json
    """
    try:
        run_bench(**locals())  # the options, by name: run_bench takes the same parameters
    except PullBenchError as exc:
        raise click.ClickException(str(exc)) from exc


def run_bench(
    image: str,
    driver: str,
    runs: int,
    vias: tuple[str, ...],
    admins: tuple[str, ...],
    admin_token_files: tuple[str, ...],
    flush: bool,
    containerd_socket: Path | None,
    namespace: str,
    runtime_endpoint: str | None,
    tls: bool,
    json_path: Path | None,
) -> None:
    ref = Reference.parse(image)
    settings = [Setting.parse(v) for v in vias] or [Setting("direct", None)]
    if len(settings) > 2 or len({s.name for s in settings}) != len(settings):
        raise PullBenchError("give one or two --via settings, with different names")
    if runs < 1:
        raise PullBenchError("--runs must be at least 1")
    admin = parse_admins(admins, admin_token_files, {s.name for s in settings})
    for setting in settings:
        if setting.mirror is None or setting.name in admin:
            continue
        if flush:
            raise PullBenchError(f"--flush needs --admin {setting.name}=URL (the node's --admin)")
        click.echo(
            f"note: no --admin for {setting.name}: cannot check that its pulls went through "
            "the mirror (clients fall back to the registry when a mirror fails)"
        )
    scheme = "https" if tls else "http"
    size = image_bytes(ref, scheme)
    client: Driver
    if driver == "ctr":
        client = CtrDriver(containerd_socket, namespace, scheme)
    elif driver == "cri":
        client = CriDriver(scheme)
    elif driver == "crictl":
        client = CrictlDriver(runtime_endpoint)
    else:
        client = SkopeoDriver(tls)
    show = sys.stderr.isatty()
    records: list[dict[str, Any]] = []
    try:
        client.prepare(settings)
        click.echo(f"{ref}: {format_size(size)}; {runs} runs x {len(settings)} with {client.name}")
        for index in range(runs):
            for setting in settings:  # interleaved: A B A B ...
                client.clean(ref)
                node = admin.get(setting.name)
                if flush and node is not None:
                    flush_mirror(node)
                label = f"run {index + 1}/{runs} [{setting.name}]"
                before = mirror_served(node) if node is not None else None
                seconds, error = timed(functools.partial(client.pull, ref, setting), label, show)
                if error is None and before is not None and node is not None:
                    # Clients fall back to the registry when a mirror fails: a fast run that
                    # went around pollen must not be reported as pollen's.
                    through = mirror_served(node) - before
                    if through < size:
                        error = (
                            f"the mirror served {through} of {size} bytes: the client went "
                            "around it to the registry (check the mirror's --upstream)"
                        )
                records.append(
                    {
                        "run": index + 1,
                        "setting": setting.name,
                        "seconds": round(seconds, 3),
                        "ok": error is None,
                        "error": error,
                    }
                )
                outcome = f"{seconds:.2f}s" if error is None else f"FAILED ({error[:200]})"
                click.echo(f"{label} {outcome}")
        client.clean(ref)
    finally:
        client.close()
    summary = {}
    for setting in settings:
        ok = [r["seconds"] for r in records if r["setting"] == setting.name and r["ok"]]
        failed = sum(1 for r in records if r["setting"] == setting.name and not r["ok"])
        summary[setting.name] = {**(stats(ok, size) if ok else {}), "failed": failed}
        if ok:
            s = summary[setting.name]
            click.echo(
                f"{setting.name:>10}: min {s['min_s']:.2f}s  median {s['median_s']:.2f}s  "
                f"max {s['max_s']:.2f}s  ({s['median_mb_per_s']} MB/s at the median)"
                + (f", {failed} failed" if failed else "")
            )
    if len(settings) == 2 and all("median_s" in summary[s.name] for s in settings):
        a, b = (summary[s.name]["median_s"] for s in settings)
        click.echo(f"{settings[0].name} / {settings[1].name} median time: {a / b:.2f}")
    if json_path is not None:
        document = {
            "command": " ".join(sys.argv),
            "image": str(ref),
            "image_bytes": size,
            "driver": client.name,
            "flush": flush,
            "runs": records,
            "summary": summary,
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
    if any(not r["ok"] for r in records):
        raise PullBenchError(f"{sum(not r['ok'] for r in records)} pulls failed (see above)")
