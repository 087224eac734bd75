"""What the node needs from a manifest's body, read in one parse (pure).

A manifest's JSON is parsed once per body, and only these facts are kept: the media type it
declares, the sizes its descriptors give (checks on downloads, `pieces/descriptors.py`) and
the config and layers it names (prefetch, `peer/fetch/prefetch.py`). One parse because a body
a registry built to parse slowly (4 MiB of `[[]],`: ~0.6 s on the 2-core VM) was parsed three
times on the event loop for each client's GET; small facts because the parse may run in a
worker process (`peer/body_parser.py`), and what crosses back is pickled.

Bounded whatever the body: at most MAX_FACT_DESCRIPTORS sizes and MAX_FACT_BLOBS config and
layer references are kept (the rest of those only counted), and strings taken from the body
are cut to MAX_TEXT characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pieces.digest import InvalidDigest, digest_hex

MAX_FACT_BLOBS = 1024  # config and layer references kept from one manifest (prefetch takes fewer)
# Descriptor sizes kept from one manifest: more than any image or index has. A 4 MiB one holds
# ~43,000, and learning them all for each of 8 repositories held the event loop 0.7 s (a
# review's measure); the sizes only add checks.
MAX_FACT_DESCRIPTORS = 1024
MAX_TEXT = 300  # characters of a string from the body kept (media types are at most 255)
# Keys of an image manifest, an image index or an artifact manifest that hold descriptors.
_ONE = ("config", "subject")
_MANY = ("layers", "manifests", "blobs")
# type "/" subtype, RFC 6838's characters (no parameters: OCI's types have none).
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]{0,126}/[A-Za-z0-9][\w!#$&^.+-]{0,126}", re.ASCII)


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """The facts of one manifest body. `error` is None when the body is a JSON object; then
    the rest is what it says."""

    error: str | None
    # The top-level `mediaType` as the body gives it (cut to MAX_TEXT); None when absent; a
    # value that is no string is "<a JSON list>" and the like, never a media type.
    media_type_field: str | None
    # (digest, size) of the descriptors with a usable digest and size, the first
    # MAX_FACT_DESCRIPTORS: config, subject, layers, manifests, blobs (an image manifest, an
    # index or an artifact manifest).
    descriptors: tuple[tuple[str, int], ...]
    # Whether `layers` is a JSON list (an image manifest needs one).
    layers_listed: bool
    # The config then the layers, the first MAX_FACT_BLOBS: a usable digest, "" for a layer
    # registries do not hold (foreign, non-distributable), None for an unusable descriptor.
    blob_refs: tuple[str | None, ...]
    blob_count: int  # config and layers in all, also those past MAX_FACT_BLOBS

    @property
    def declared_type(self) -> str | None:
        """The `mediaType` the body declares at its top, when it is a media type (it goes
        into a header); None otherwise."""
        said = self.media_type_field
        return said if said is not None and _MEDIA_TYPE.fullmatch(said) else None


def read_facts(body: bytes) -> ManifestFacts:
    """The facts of `body`, parsed once. Never raises for what the body holds: a body that
    is no JSON object gives facts with its `error` and nothing else."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return _unusable(f"not JSON: {str(exc)[:100]}")
    if not isinstance(document, dict):
        return _unusable(f"a JSON {type(document).__name__}, not an object")
    layers = document.get("layers")
    config: list[Any] = [document["config"]] if "config" in document else []
    listed = layers if isinstance(layers, list) else []
    blobs = [*config, *listed[: MAX_FACT_BLOBS - len(config)]]
    return ManifestFacts(
        error=None,
        media_type_field=_text(document["mediaType"]) if "mediaType" in document else None,
        descriptors=tuple(_sized_descriptors(document)),
        layers_listed=isinstance(layers, list),
        blob_refs=tuple(_blob_ref(entry) for entry in blobs),
        blob_count=len(config) + len(listed),
    )


def registries_hold(descriptor: dict[str, object]) -> bool:
    """False for a layer that registries do not hold (foreign, non-distributable): its client
    fetches it from the descriptor's `urls`, never through a mirror."""
    kind = descriptor.get("mediaType")
    return not (isinstance(kind, str) and ("nondistributable" in kind or "foreign" in kind))


def _unusable(error: str) -> ManifestFacts:
    return ManifestFacts(error, None, (), False, (), 0)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    return f"<a JSON {type(value).__name__}>"


def _usable_digest(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        digest_hex(value)
    except InvalidDigest:
        return None
    return value


def _sized_descriptors(document: dict[str, Any]) -> list[tuple[str, int]]:
    """(digest, size) of the descriptors with a usable digest and size, the first
    MAX_FACT_DESCRIPTORS; the others are skipped (sizes only add checks, they never refuse a
    manifest)."""
    descriptors: list[Any] = [document.get(key) for key in _ONE]
    for key in _MANY:
        entries = document.get(key)
        if isinstance(entries, list):
            descriptors += entries
    found = []
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            continue
        digest, size = _usable_digest(descriptor.get("digest")), descriptor.get("size")
        if digest is not None and type(size) is int and size >= 0:
            found.append((digest, size))
            if len(found) == MAX_FACT_DESCRIPTORS:
                break
    return found


def _blob_ref(descriptor: object) -> str | None:
    """The descriptor's digest; "" for a layer registries do not hold; None when it is not a
    descriptor we can use."""
    if not isinstance(descriptor, dict):
        return None
    digest = _usable_digest(descriptor.get("digest"))
    if digest is None:
        return None
    return digest if registries_hold(descriptor) else ""
