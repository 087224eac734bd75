"""Which files `pollen configure RUNTIME` changes, and how: reads the runtime's files, asks the
pure writers for their new text, and returns the changes (files.py makes them).

Paths inside the files are the host's (`/etc/containerd/certs.d`); paths on disk are under
`root` (an init container sees the host's / at /host, a test at its tmp_path).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from peer.configure import containerd, containers, docker, rancher
from peer.configure.files import Change, ConfigureError, read_text, resolve_in, undo_change

RUNTIMES = ("containerd", "docker", "podman", "crio", "k3s", "rke2")
_REGISTRY = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?"
)


@dataclass(frozen=True)
class Request:
    runtime: str
    endpoint: str  # the node's registry address as the runtime reaches it
    registries: tuple[str, ...] = ("docker.io",)
    all_registries: bool = False
    config_file: str | None = None  # the runtime's main file (host path)
    hosts_dir: str = containerd.DEFAULT_HOSTS_DIR  # containerd, when config.toml names none
    root: Path = Path("/")
    force: bool = False  # --undo even of files changed since pollen wrote them


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    after: str = ""  # what the operator must do next (restart, reload), or why not


def check(request: Request) -> None:
    """Raises ConfigureError for a request no runtime file could carry safely."""
    if request.runtime not in RUNTIMES:
        raise ConfigureError(f"unknown runtime {request.runtime!r}: one of {', '.join(RUNTIMES)}")
    parts = urlsplit(request.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigureError(f"--endpoint {request.endpoint!r}: expected http://HOST:PORT")
    containerd.check_dir(request.hosts_dir, "--hosts-dir")
    for registry in request.registries:
        # A registry name becomes a directory name (containerd): nothing but a host[:port].
        if not _REGISTRY.fullmatch(registry) or len(registry) > 253:
            raise ConfigureError(f"--registry {registry!r}: expected a registry HOST[:PORT]")
    if request.runtime in ("docker", "podman", "crio") and request.all_registries:
        raise ConfigureError(
            f"{request.runtime} sends no registry name to a mirror: --all-registries is for "
            "containerd, k3s and rke2"
        )
    if request.runtime == "docker" and request.registries != ("docker.io",):
        raise ConfigureError("docker asks its registry-mirrors for Docker Hub (docker.io) only")
    if request.runtime in ("podman", "crio") and len(request.registries) != 1:
        raise ConfigureError(
            f"{request.runtime} sends no registry name to a mirror, so the node answers from its "
            "--default-upstream: configure one registry, that one"
        )


def plan(request: Request) -> Plan:
    """The changes that configure the runtime.

    Raises:
        ConfigureError: a bad request, or a runtime file pollen cannot change safely.
    """
    check(request)
    runtime = request.runtime
    if runtime == "containerd":
        return _containerd(request)
    if runtime == "docker":
        path = _on_disk(request, request.config_file or docker.DEFAULT_CONFIG)
        text = read_text(path)
        after = _restart_note(runtime) + (
            " It asks the mirror for Docker Hub images only; the node's --default-upstream "
            "must be Docker Hub (its default)."
        )
        return Plan([Change(path, text, docker.with_mirror(text, request.endpoint))], after)
    if runtime in ("podman", "crio"):
        return _containers(request)
    path = _on_disk(request, request.config_file or rancher.DEFAULT_CONFIG[runtime])
    text = read_text(path)
    registries = [rancher.EVERY_REGISTRY] if request.all_registries else list(request.registries)
    change = Change(path, text, rancher.with_mirrors(text, registries, request.endpoint))
    return Plan([change], _restart_note(runtime))


def installed(request: Request) -> Path | None:
    """None when the runtime looks installed on the host, else the path that is missing:
    containerd's config.toml, or the directory of the other runtimes' files."""
    runtime = request.runtime
    if runtime == "containerd":
        path = _on_disk(request, request.config_file or containerd.DEFAULT_CONFIG)
    elif runtime == "docker":
        path = _on_disk(request, request.config_file or docker.DEFAULT_CONFIG).parent
    elif runtime in ("podman", "crio"):
        path = _on_disk(request, request.config_file or containers.DEFAULT_MAIN).parent
    else:
        path = _on_disk(request, request.config_file or rancher.DEFAULT_CONFIG[runtime]).parent
    return None if path.exists() else path


def plan_undo(request: Request) -> Plan:
    """The changes that put back every file an earlier `pollen configure` of the runtime
    changed (found by their backups and markers)."""
    check(request)
    runtime = request.runtime
    paths: list[Path] = []
    if runtime == "containerd":
        config = _on_disk(request, request.config_file or containerd.DEFAULT_CONFIG)
        paths.append(config)
        hosts = _on_disk(request, _hosts_dir_in(read_text(config)) or request.hosts_dir)
        if hosts.is_dir():
            paths += sorted(_on_disk_under(request, p / "hosts.toml") for p in hosts.iterdir())
    elif runtime == "docker":
        paths.append(_on_disk(request, request.config_file or docker.DEFAULT_CONFIG))
    elif runtime in ("podman", "crio"):
        paths.append(_drop_in_dir(request) / containers.DROP_IN)
    else:
        paths.append(_on_disk(request, request.config_file or rancher.DEFAULT_CONFIG[runtime]))
    changes = [c for p in paths if (c := undo_change(p, force=request.force)) is not None]
    return Plan(changes, _restart_note(runtime) if changes else "")


def _containerd(request: Request) -> Plan:
    config = _on_disk(request, request.config_file or containerd.DEFAULT_CONFIG)
    before = read_text(config)
    if before is None:
        raise ConfigureError(
            f"{config} does not exist: is containerd installed? (give --config-file if its "
            "config lives elsewhere; `containerd config default` writes one)"
        )
    after, hosts_dir = containerd.with_config_path(before, request.hosts_dir)
    changes = [Change(config, before, after)]
    names = [containerd.DEFAULT_HOST] if request.all_registries else list(request.registries)
    for name in names:
        path = _on_disk(
            request, f"{hosts_dir}/{_host_directory(request, hosts_dir, name)}/hosts.toml"
        )
        text = read_text(path)
        if text is None and path.parent.is_dir():
            legacy = sorted(p.name for p in path.parent.iterdir() if p.suffix in _CERT_SUFFIXES)
            if legacy:
                raise ConfigureError(
                    f"{path.parent} holds {', '.join(legacy)} and no hosts.toml: containerd "
                    "reads those files only while there is no hosts.toml. Write a hosts.toml "
                    "there that names them (ca = ..., client = ...; containerd's hosts.md), "
                    "then run pollen configure again: it keeps that file's settings"
                )
        registry = None if name == containerd.DEFAULT_HOST else name
        changes.append(Change(path, text, containerd.hosts_toml(text, registry, request.endpoint)))
    note = "hosts.toml files are read at every pull."
    if changes[0].changes:
        note = f"{_restart_note('containerd')} {note}"
    return Plan(changes, note)


def _containers(request: Request) -> Plan:
    main = _on_disk(request, request.config_file or containers.DEFAULT_MAIN)
    folder = _drop_in_dir(request)
    drop_ins = sorted(folder.glob("*.conf"))  # read in this order, ours among them
    earlier: list[tuple[str, str]] = []
    for path in [main, *(p for p in drop_ins if p.name < containers.DROP_IN)]:
        if (text := read_text(path)) is not None:
            earlier.append((str(path), text))
    path = folder / containers.DROP_IN
    text = containers.drop_in(request.runtime, request.registries[0], request.endpoint, earlier)
    later = [p.name for p in drop_ins if p.name > containers.DROP_IN]
    after = _restart_note(request.runtime)
    if later:
        after += f" Read after ours, and may override it: {', '.join(later)}."
    return Plan([Change(path, read_text(path), text)], after)


def _restart_note(runtime: str) -> str:
    return {
        "containerd": "containerd reads config_path at start: systemctl restart containerd.",
        "docker": "dockerd re-reads registry-mirrors on SIGHUP: systemctl reload docker.",
        "podman": "podman reads the registries at every command: nothing to restart.",
        "crio": "CRI-O reads the registries at start: systemctl restart crio.",
    }.get(runtime, f"{runtime} reads registries.yaml at start: systemctl restart {runtime}.")


def _drop_in_dir(request: Request) -> Path:
    main = request.config_file or containers.DEFAULT_MAIN
    return _on_disk(request, main + ".d")


def _hosts_dir_in(config: str | None) -> str | None:
    """The config_path an existing config.toml names (for --undo)."""
    try:
        doc = tomllib.loads(config or "")
    except tomllib.TOMLDecodeError:
        return None
    plugins = doc.get("plugins", {})
    for name in containerd.CRI_REGISTRY_PLUGIN.values():
        path = plugins.get(name, {}).get("registry", {}).get("config_path")
        if isinstance(path, str) and path:
            return path.split(":")[0]
    return None


_CERT_SUFFIXES = {".crt", ".cert", ".key"}


def _host_directory(request: Request, hosts_dir: str, registry: str) -> str:
    """The directory containerd reads a registry's hosts.toml from: `host_port_` when it
    exists (containerd looks there first for a HOST:PORT), else the registry's name."""
    if ":" in registry:
        escaped = registry.replace(":", "_") + "_"
        if _on_disk(request, f"{hosts_dir}/{escaped}").is_dir():
            return escaped
    return registry


def _on_disk(request: Request, host_path: str) -> Path:
    """Where a path of the host is, under the root, its symlinks followed as the host would."""
    return resolve_in(request.root / host_path.lstrip("/"), request.root)


def _on_disk_under(request: Request, path: Path) -> Path:
    return resolve_in(path, request.root)
