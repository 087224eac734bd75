"""The simulated image: its blobs (a config and N layers), sized as `bench image` writes them.

`pollen bench swarm --size S --layers N` pushes N layers, each a tar of one file of S // N
random bytes (bench/oci_image.py's `plain_specs`), and a small JSON config. The tar framing
and the config's length are reproduced here byte for byte, so that the simulator's image,
its T_min and its "origin bytes / image" are the testbed's, not a round number near them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile pads a stream to whole records


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    kind: str  # "config" or "layer"


def tar_size(payload: int) -> int:
    """Bytes of a tar holding one regular file of `payload` bytes, as Python's tarfile writes
    it (a header block, the data padded to blocks, two zero blocks, padded to a record)."""
    blocks = TAR_BLOCK + -(-payload // TAR_BLOCK) * TAR_BLOCK + 2 * TAR_BLOCK
    return -(-blocks // TAR_RECORD) * TAR_RECORD


def config_size(layers: int) -> int:
    """The length of the config JSON `write_layers` makes for `layers` layers (a diff_id is
    always "sha256:" and 64 hex digits, so the length does not depend on the bytes)."""
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/layer0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64] * layers},
    }
    return len(json.dumps(doc).encode())


def plain_layer_sizes(size: int, layers: int) -> list[int]:
    """The layer blob sizes of `bench swarm --size SIZE --layers N` (plain profile)."""
    if layers < 1 or size < 1:
        raise ValueError("at least one layer of at least one byte")
    return [tar_size(max(1, size // layers))] * layers


def image_blobs(layer_sizes: list[int]) -> list[Blob]:
    """The config, then the layers: the order a client asks for them (a digest per blob,
    distinct even for layers of equal size, as random contents give)."""

    def digest(label: str) -> str:
        return "sha256:" + hashlib.sha256(label.encode()).hexdigest()

    blobs = [Blob(digest(f"config/{len(layer_sizes)}"), config_size(len(layer_sizes)), "config")]
    for i, size in enumerate(layer_sizes):
        if size < 1:
            raise ValueError("a layer has at least one byte")
        blobs.append(Blob(digest(f"layer{i}/{size}"), size, "layer"))
    return blobs
