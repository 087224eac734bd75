"""Which manifests and blobs an image is, read from its manifests (pure).

An index (OCI image index, Docker manifest list) names one manifest per platform: preheat
takes those of the chosen platforms (by default, the node's own). An image manifest names a
config and layers. What a registry sends is read with bounds: manifests are at most
MANIFEST_LIMIT bytes (fetch side), and at most MAX_ENTRIES entries are taken from one.
"""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass
from typing import Any

from pieces.digest import InvalidDigest, digest_hex
from pieces.manifest_facts import registries_hold

MAX_ENTRIES = 256  # manifests of an index, blobs of a manifest

_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class UnusableManifest(ValueError):
    """A manifest that cannot be read as the kind it is served as."""


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


def parse_platform(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`.

    Raises:
        ValueError: not os/arch[/variant].
    """
    parts = text.strip().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"not a platform: {text!r} (use os/arch[/variant], e.g. linux/amd64)")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def this_platform() -> Platform:
    """The platform of the machine the node runs on (what its runtime would pull)."""
    machine = host_platform.machine().lower()
    return Platform("linux", _MACHINES.get(machine, machine))


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int  # as the manifest says: for progress only, never to allocate


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UnusableManifest(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(document, dict):
        raise UnusableManifest("not a JSON object")
    return document


def _descriptor(entry: object) -> tuple[str, int] | None:
    if not isinstance(entry, dict):
        return None
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or type(size) is not int or size < 0:
        return None
    try:
        digest_hex(digest)
    except InvalidDigest:
        return None
    return digest, size


def index_manifests(body: bytes, platforms: list[Platform] | None) -> list[str]:
    """The digests of the index's manifests for `platforms` (None: all of them).

    Raises:
        UnusableManifest: not an index we can read, or none of its manifests matches.
    """
    entries = _document(body).get("manifests")
    if not isinstance(entries, list):
        raise UnusableManifest("an index without a list of manifests")
    chosen: list[str] = []
    offered: list[str] = []
    for entry in entries[:MAX_ENTRIES]:
        described = _descriptor(entry)
        if described is None:
            continue
        plat = entry.get("platform")
        found = None
        if isinstance(plat, dict) and isinstance(plat.get("os"), str):
            variant = plat.get("variant") if isinstance(plat.get("variant"), str) else None
            found = Platform(plat["os"], str(plat.get("architecture", "")), variant)
            offered.append(str(found))
        if platforms is None or (found is not None and _matches(found, platforms)):
            chosen.append(described[0])
    if not chosen:
        wanted = ", ".join(map(str, platforms or []))
        raise UnusableManifest(
            f"no manifest for {wanted} in the index (it has: {', '.join(offered) or 'none'})"
        )
    return list(dict.fromkeys(chosen))


def _matches(found: Platform, wanted: list[Platform]) -> bool:
    return any(
        found.os == w.os
        and found.architecture == w.architecture
        and (w.variant is None or found.variant == w.variant)
        for w in wanted
    )


def manifest_blobs(body: bytes) -> list[Blob]:
    """The config and layers of an image manifest, each once, in order; layers that
    registries do not hold (foreign, non-distributable) are left out.

    Raises:
        UnusableManifest: not a JSON object, no list of layers, or a descriptor without a
            usable digest and size.
    """
    document = _document(body)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise UnusableManifest("an image manifest without a list of layers")
    config = [document["config"]] if "config" in document else []
    blobs: dict[str, Blob] = {}
    for entry in [*config, *layers][:MAX_ENTRIES]:
        described = _descriptor(entry)
        if described is None:
            raise UnusableManifest("a descriptor without a usable digest and size")
        if not registries_hold(entry):
            continue
        blobs.setdefault(described[0], Blob(*described))
    return list(blobs.values())
