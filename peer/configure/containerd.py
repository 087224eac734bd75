"""containerd: a registry `config_path` in config.toml, and a hosts.toml per registry that puts
the pollen node first and leaves the registry as the fallback.

containerd reads `config_path` once, at start (its CRI plugin: the kubelet's pulls; `ctr`
takes the same directory as `--hosts-dir`), and the hosts.toml files at every pull. The
plugin that holds `config_path` is named by the config's version:
- version 3 (containerd 2.x): `[plugins."io.containerd.cri.v1.images".registry]`
- version 2 (containerd 1.x): `[plugins."io.containerd.grpc.v1.cri".registry]`
- version 1 (no `version` key, containerd 1.x): `[plugins.cri.registry]`
An existing `config_path` is kept (the hosts.toml files go there); the deprecated
`registry.mirrors` cannot be combined with it (containerd refuses to start), so pollen stops
and says so rather than guess how to merge them.

Pure: text in, text out. The files are read and written by files.py.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import tomlkit
import tomlkit.exceptions

from peer.configure.files import ConfigureError

DEFAULT_CONFIG = "/etc/containerd/config.toml"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
DEFAULT_HOST = "_default"  # the hosts.toml directory for every registry without its own
CRI_REGISTRY_PLUGIN = {
    1: "cri",
    2: "io.containerd.grpc.v1.cri",
    3: "io.containerd.cri.v1.images",
}
CAPABILITIES = ["pull", "resolve"]
HOSTS_HEADER = (
    "# pollen configure: pulls go to the pollen node first; containerd falls back to the\n"
    "# next host, then to the registry (server). `pollen configure containerd --undo` puts\n"
    "# this file back as it was.\n"
)


def registry_url(registry: str) -> str:
    """The upstream containerd falls back to (Docker Hub's API lives on another host)."""
    if registry == "docker.io":
        return "https://registry-1.docker.io"
    return f"https://{registry}"


def with_config_path(text: str | None, default_dir: str) -> tuple[str, str]:
    """config.toml with a registry `config_path`; returns the text and that directory (the
    existing setting when there is one, else `default_dir`).

    Raises:
        ConfigureError: not TOML, an unknown version, or `registry.mirrors` in use.
    """
    doc = _parse(text or "", "config.toml")
    version = _version(doc)
    imports = doc.get("imports")
    if version is None:
        if doc.body and any(key is not None for key, _ in doc.body):
            # Settings in the version 1 layout: keep it, name the plugin its way.
            version = 1
        else:
            # Empty (or comments only): start the current layout of containerd 1.x, which
            # containerd 2.x reads too.
            doc.add("version", 2)
            version = 2
    registry = _table_at(doc, ["plugins", CRI_REGISTRY_PLUGIN[version], "registry"])
    if registry.get("mirrors"):
        raise ConfigureError(
            "config.toml sets registry.mirrors (deprecated), which containerd refuses beside "
            "config_path: move those mirrors into hosts.toml files "
            "(https://github.com/containerd/containerd/blob/main/docs/hosts.md), remove "
            "registry.mirrors, and run pollen configure again"
        )
    current = registry.get("config_path")
    if isinstance(current, str) and current.strip():
        # containerd takes a list of directories separated by ':'; the first is searched first.
        first = current.split(":")[0]
        check_dir(first, "config.toml's config_path")
        return tomlkit.dumps(doc), first
    if imports:
        raise ConfigureError(
            "config.toml imports other files (imports = ...): containerd 1.x replaces a "
            "plugin's whole table with an imported file's, so a config_path set here may not "
            "hold. Set config_path in the file that configures the CRI plugin (or here, if "
            "none does), then run pollen configure again: it uses an existing config_path"
        )
    configs = registry.get("configs") or {}
    with_tls = sorted(host for host, c in configs.items() if isinstance(c, dict) and "tls" in c)
    if with_tls:
        raise ConfigureError(
            f"config.toml sets registry.configs.<host>.tls for {', '.join(with_tls)}, which "
            "containerd no longer applies once config_path is set: move those settings into "
            "hosts.toml files (ca, client, skip_verify; containerd's hosts.md) first"
        )
    check_dir(default_dir, "--hosts-dir")
    registry["config_path"] = default_dir
    return tomlkit.dumps(doc), default_dir


def check_dir(path: str, what: str) -> None:
    """A directory containerd and pollen agree on: absolute, no `..`.

    Raises:
        ConfigureError: otherwise.
    """
    if not path.startswith("/") or ".." in path.split("/"):
        raise ConfigureError(f"{what} {path!r}: expected an absolute path without '..'")


def hosts_toml(text: str | None, registry: str | None, endpoint: str) -> str:
    """A registry's hosts.toml with `endpoint` as the first host (`registry` None: the
    `_default` directory, whose server is each pull's own registry). The settings and other
    hosts of an existing file are kept, after ours (its comments are not: the backup has them).

    Raises:
        ConfigureError: the existing file is not TOML, or its hosts are not tables.
    """
    old = _parse(text or "", "hosts.toml")
    doc = tomlkit.document()
    server = old.get("server")
    if server is None and registry is not None:
        server = registry_url(registry)
    if server is not None:
        doc.add("server", server)
    for key, value in old.items():
        if key not in ("server", "host"):
            doc.add(key, value)
    old_hosts = old.get("host", {})
    if not isinstance(old_hosts, dict):
        raise ConfigureError("hosts.toml: `host` is not a table of hosts")
    hosts = tomlkit.table(is_super_table=True)
    ours = tomlkit.table()
    ours.add("capabilities", CAPABILITIES)
    hosts.add(endpoint, ours)
    for url, settings in old_hosts.items():
        if url.rstrip("/") != endpoint.rstrip("/"):
            hosts.add(url, settings)
    doc.add(tomlkit.nl())
    doc.add("host", hosts)
    return HOSTS_HEADER + tomlkit.dumps(doc)


def _parse(text: str, what: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigureError(f"{what} is not valid TOML: {exc}") from exc


def _version(doc: tomlkit.TOMLDocument) -> int | None:
    version = doc.get("version")
    if version is None:
        return None
    if version not in CRI_REGISTRY_PLUGIN or isinstance(version, bool):
        raise ConfigureError(
            f"config.toml has version = {version!r}: pollen knows versions 1, 2 and 3"
        )
    return int(version)


def _table_at(doc: tomlkit.TOMLDocument, keys: list[str]) -> MutableMapping[str, Any]:
    """The table at `keys`, made (as super tables: no empty headers) where missing."""
    current: Any = doc
    for i, key in enumerate(keys):
        if key not in current:
            current.add(key, tomlkit.table(is_super_table=i < len(keys) - 1))
        current = current[key]
        if not isinstance(current, dict):
            raise ConfigureError(f"config.toml: {'.'.join(keys[: i + 1])} is not a table")
    # A table, an inline table, or tomlkit's view of a table written in several places.
    table: MutableMapping[str, Any] = current
    return table
