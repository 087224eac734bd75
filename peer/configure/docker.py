"""docker: the node first in daemon.json's `registry-mirrors`.

dockerd asks mirrors for Docker Hub images only (an image of any other registry is pulled
from that registry directly), and sends no registry name to a mirror: the pollen node must
have Docker Hub as its default upstream (the built-in default). dockerd re-reads
`registry-mirrors` on SIGHUP (`systemctl reload docker`).

Pure: text in, text out. JSON has no comments to keep; the other settings keep their order.
"""

from __future__ import annotations

import json
from typing import Any

from peer.configure.files import ConfigureError

DEFAULT_CONFIG = "/etc/docker/daemon.json"
MIRRORS = "registry-mirrors"


def with_mirror(text: str | None, endpoint: str) -> str:
    """daemon.json with `endpoint` as the first registry mirror (others kept after it).

    Raises:
        ConfigureError: the file is not a JSON object, or its mirrors are not a list of URLs.
    """
    settings: dict[str, Any] = {}
    if text is not None and text.strip():
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigureError(f"daemon.json is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigureError("daemon.json is not a JSON object")
        settings = loaded
    mirrors = settings.get(MIRRORS, [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise ConfigureError(f"daemon.json: {MIRRORS} is not a list of URLs")
    ours = endpoint.rstrip("/")
    settings[MIRRORS] = [endpoint, *(m for m in mirrors if m.rstrip("/") != ours)]
    return json.dumps(settings, indent=2) + "\n"
