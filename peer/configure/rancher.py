"""k3s and rke2: the node first among a registry's mirror endpoints in registries.yaml
(`mirrors:`); `configs:` and everything else are kept as they are, comments included.

k3s and rke2 turn the file into containerd's hosts.toml at start (and fall back to the
registry itself after the endpoints): the service must be restarted to take it. `"*"` is
their name for every registry (--all-registries).

Pure: text in, text out.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from peer.configure.files import ConfigureError

DEFAULT_CONFIG = {
    "k3s": "/etc/rancher/k3s/registries.yaml",
    "rke2": "/etc/rancher/rke2/registries.yaml",
}
EVERY_REGISTRY = "*"


def with_mirrors(text: str | None, registries: list[str], endpoint: str) -> str:
    """registries.yaml with `endpoint` first in each registry's `endpoint` list.

    Raises:
        ConfigureError: not YAML, or `mirrors` (or a registry's entry) is not a mapping.
    """
    yaml = YAML()  # round trip: comments and key order kept
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    try:
        doc: Any = yaml.load(text or "")
    except YAMLError as exc:
        raise ConfigureError(f"registries.yaml is not valid YAML: {exc}") from exc
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, dict):
        raise ConfigureError("registries.yaml is not a mapping")
    mirrors = doc.setdefault("mirrors", CommentedMap())
    if not isinstance(mirrors, dict):
        raise ConfigureError("registries.yaml: mirrors is not a mapping")
    for registry in registries:
        entry = mirrors.setdefault(registry, CommentedMap())
        if not isinstance(entry, dict):
            raise ConfigureError(f"registries.yaml: mirrors.{registry} is not a mapping")
        endpoints = entry.get("endpoint")
        if endpoints is None:
            endpoints = entry["endpoint"] = CommentedSeq()
        if not isinstance(endpoints, list):
            raise ConfigureError(f"registries.yaml: mirrors.{registry}.endpoint is not a list")
        # Changed in place, so the comments on the other endpoints stay with them.
        ours = endpoint.rstrip("/")
        for i in reversed(range(len(endpoints))):
            if str(endpoints[i]).rstrip("/") == ours:
                del endpoints[i]
        endpoints.insert(0, endpoint)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
