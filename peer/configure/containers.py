"""podman and CRI-O (containers-registries.conf): a drop-in under registries.conf.d that puts
the node first among a registry's mirrors; registries.conf itself is never rewritten.

A drop-in's `[[registry]]` replaces an entry of the same prefix read before it (the main file,
then the drop-ins in name order), so the drop-in is named to sort late and carries over what
the earlier entry said (its location, settings and mirrors, after ours).

podman and CRI-O send no registry name to a mirror: the node answers such requests from its
`--default-upstream`. A mirror of any other registry would be asked for that registry's names
and answer with another registry's images, so one registry only, the node's default upstream.

Pure: texts in, text out.
"""

from __future__ import annotations

import tomllib
from typing import Any
from urllib.parse import urlsplit

from peer.configure.files import ConfigureError

DEFAULT_MAIN = "/etc/containers/registries.conf"
DROP_IN = "99-pollen.conf"
HEADER = (
    "# pollen configure: pulls of this registry go to the pollen node first; the registry\n"
    "# itself is the fallback. `pollen configure {runtime} --undo` removes this file.\n"
)


def drop_in(runtime: str, registry: str, endpoint: str, earlier: list[tuple[str, str]]) -> str:
    """The drop-in for `registry`; `earlier` are (name, text) of registries.conf and the
    drop-ins read before ours, in order.

    Raises:
        ConfigureError: an earlier file is not TOML, or the endpoint is not an http(s) URL.
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigureError(f"--endpoint {endpoint!r}: expected http://HOST:PORT")
    entry: dict[str, Any] = {"prefix": registry, "location": registry}
    mirrors: list[dict[str, Any]] = []
    for name, text in earlier:
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigureError(f"{name} is not valid TOML: {exc}") from exc
        for found in config.get("registry", []):
            if isinstance(found, dict) and _prefix(found) == registry:
                entry = {k: v for k, v in found.items() if k != "mirror"}
                mirrors = [m for m in found.get("mirror", []) if isinstance(m, dict)]
    ours = {"location": parts.netloc, "insecure": parts.scheme == "http"}
    mirrors = [ours, *(m for m in mirrors if m.get("location") != parts.netloc)]
    lines = [HEADER.format(runtime=runtime), "[[registry]]"]
    lines += [f"{key} = {_value(value)}" for key, value in entry.items()]
    for mirror in mirrors:
        lines += ["", "[[registry.mirror]]"]
        lines += [f"{key} = {_value(value)}" for key, value in mirror.items()]
    return "\n".join(lines) + "\n"


def _prefix(entry: dict[str, Any]) -> Any:
    return entry.get("prefix", entry.get("location"))


def _value(value: Any) -> str:
    """A TOML value for the scalars and lists registries.conf uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigureError(f"registries.conf value {value!r} is not one pollen can carry over")
