"""Synthetic OCI images: an OCI layout directory with layers of random (incompressible) data.

Each layer is an uncompressed tar holding one file of random bytes, so containerd can unpack it
and every layer has a distinct digest. `skopeo copy oci:DIR:TAG docker://...` pushes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Image:
    """What was written: the layout directory, the tag, and the descriptors of its parts."""

    layout: Path
    tag: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def total_size(self) -> int:
        return self.manifest.size + self.config.size + sum(d.size for d in self.layers)

    def blob_digests(self) -> list[str]:
        return [self.config.digest, *(d.digest for d in self.layers)]


class _RandomReader:
    """`size` seeded pseudo-random bytes, readable in chunks (never all in memory)."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


class _HashingWriter(io.RawIOBase):
    def __init__(self, f: io.BufferedWriter) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)


def _write_blob(layout: Path, media_type: str, body: bytes) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(body)
    return Descriptor(media_type, digest, len(body))


def _write_layer(layout: Path, size: int, seed: int, name: str) -> Descriptor:
    tmp = layout / "blobs" / "sha256" / f".tmp-{seed}"
    with open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, _RandomReader(size, seed))
    digest = "sha256:" + out.sha.hexdigest()
    os.replace(tmp, layout / "blobs" / "sha256" / digest[7:])
    return Descriptor(LAYER_MEDIA_TYPE, digest, out.size)


def write_image(layout: Path, layer_sizes: list[int], tag: str = "latest", seed: int = 0) -> Image:
    """Write an OCI layout at `layout` with one random-content layer per entry of `layer_sizes`.

    The same sizes and seed give the same digests; a different seed gives different layers.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = tuple(
        _write_layer(layout, size, seed * 1000 + i, f"layer{i}.bin")
        for i, size in enumerate(layer_sizes)
    )
    # The tars are uncompressed, so the diff_ids are the layer digests themselves.
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/layer0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
    }
    config = _write_blob(layout, CONFIG_MEDIA_TYPE, json.dumps(config_doc).encode())
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.as_json(),
        "layers": [d.as_json() for d in layers],
    }
    manifest = _write_blob(layout, MANIFEST_MEDIA_TYPE, json.dumps(manifest_doc).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {**manifest.as_json(), "annotations": {"org.opencontainers.image.ref.name": tag}}
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, tag, manifest, config, layers)
