"""Synthetic OCI images: an OCI layout directory whose layers have chosen sizes and content.

Each layer is a tar holding one file, either of seeded random bytes (incompressible) or of
"text" (half random, half repeated text, which gzip shrinks to about half), stored uncompressed
or gzip-compressed. The same spec gives the same digests, so two releases of an image share the
layers whose specs did not change. `skopeo copy oci:DIR:TAG docker://...` pushes it.

Profiles (`image_spec`):
- `plain`: N equal layers of random bytes (`--layers 4 --layer-size 128MiB`).
- `jib`: a layered Java application as Jib builds it: a JDK base (~80 MB), dependency jars
  (~200 MB), resources (~300 MB) and application classes (~1 MB), scaled by `scale`; release K
  differs from release K-1 in the classes layer only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
GZIP_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
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


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer: the file it holds, its size in bytes before compression, and its content."""

    name: str
    size: int
    seed: int
    content: str = "random"  # or "text"
    gzip: bool = False


CONTENTS = ("random", "text")
_TEXT = (
    b"package com.example.app; import java.util.*; public final class Service { private "
    b"final Map<String, List<Integer>> index = new HashMap<>(); public int lookup(String k) "
    b"{ return index.getOrDefault(k, List.of()).size(); } } <resource key='greeting'>Hello, "
    b"world</resource> META-INF/MANIFEST.MF Main-Class: com.example.app.Main Created-By: jib\n"
)
_BLOCK = 64 * 1024


class _ContentReader:
    """`size` bytes of seeded content, readable in chunks (never all in memory).

    "text" blocks are half random bytes, half a rotation of a short Java-like text: gzip
    shrinks them to about half, between a jar (already compressed) and plain source.
    """

    def __init__(self, size: int, seed: int, content: str) -> None:
        if content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, not {content!r}")
        self._left = size
        self._rng = random.Random(seed)
        self._text = content == "text"
        self._pending = b""

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if not self._text:
            self._left -= n
            return self._rng.randbytes(n)
        while len(self._pending) < n:
            shift = self._rng.randrange(len(_TEXT))
            text = (_TEXT[shift:] + _TEXT[:shift]) * (_BLOCK // 2 // len(_TEXT) + 1)
            self._pending += self._rng.randbytes(_BLOCK // 2) + text[: _BLOCK // 2]
        out, self._pending = self._pending[:n], self._pending[n:]
        self._left -= n
        return out


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingWriter(io.RawIOBase):
    """Passes writes on to `f`, counting and hashing them."""

    def __init__(self, f: _Sink) -> None:
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


def _write_layer(layout: Path, spec: LayerSpec) -> tuple[Descriptor, str]:
    """Write one layer blob; return its descriptor and its diff_id (digest of the tar)."""
    tmp = layout / "blobs" / "sha256" / f".tmp-{spec.seed}"
    with open(tmp, "wb") as raw:
        out = _HashingWriter(raw)
        tar_hash = out
        zipped: gzip.GzipFile | None = None
        if spec.gzip:
            # mtime=0 and no file name: the same spec always gives the same bytes.
            zipped = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0, filename="")
            tar_hash = _HashingWriter(zipped)
        with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(spec.name)
            info.size = spec.size
            info.mode = 0o644
            info.mtime = 0
            content = _ContentReader(spec.size, spec.seed, spec.content)
            tar.addfile(info, content)
        if zipped is not None:
            zipped.close()
    digest = "sha256:" + out.sha.hexdigest()
    os.replace(tmp, layout / "blobs" / "sha256" / digest[7:])
    media_type = GZIP_LAYER_MEDIA_TYPE if spec.gzip else LAYER_MEDIA_TYPE
    return Descriptor(media_type, digest, out.size), "sha256:" + tar_hash.sha.hexdigest()


def write_image(layout: Path, layer_sizes: list[int], tag: str = "latest", seed: int = 0) -> Image:
    """Write an OCI layout at `layout` with one random-content layer per entry of `layer_sizes`.

    The same sizes and seed give the same digests; a different seed gives different layers.
    """
    specs = [
        LayerSpec(f"layer{i}.bin", size, seed * 1000 + i) for i, size in enumerate(layer_sizes)
    ]
    return write_layers(layout, specs, tag)


def write_layers(layout: Path, specs: list[LayerSpec], tag: str) -> Image:
    """Write an OCI layout at `layout` (added to it if it exists) with the given layers."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    written = [_write_layer(layout, spec) for spec in specs]
    layers = tuple(descriptor for descriptor, _ in written)
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": [f"/{specs[0].name}"] if specs else []},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in written]},
    }
    config = _write_blob(layout, CONFIG_MEDIA_TYPE, json.dumps(config_doc).encode())
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.as_json(),
        "layers": [d.as_json() for d in layers],
    }
    manifest = _write_blob(layout, MANIFEST_MEDIA_TYPE, json.dumps(manifest_doc).encode())
    entry = {**manifest.as_json(), "annotations": {"org.opencontainers.image.ref.name": tag}}
    _add_to_index(layout, tag, entry)
    return Image(layout, tag, manifest, config, layers)


def _add_to_index(layout: Path, tag: str, entry: dict[str, Any]) -> None:
    """Add or replace the tag's entry in index.json (other tags stay)."""
    path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    if path.exists():
        index = json.loads(path.read_text())
    manifests = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"] = [*manifests, entry]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, path)


# ---- profiles ----------------------------------------------------------------------------

MB = 1000 * 1000
JIB_LAYERS = (  # (file name, size at scale 1)
    ("opt/java/jdk/lib/modules", 80 * MB),
    ("app/libs/dependencies.jar", 200 * MB),
    ("app/resources/assets.pak", 300 * MB),
    ("app/classes/classes.bin", 1 * MB),
)


def jib_specs(scale: float, release: int, content: str, gzip_layers: bool) -> list[LayerSpec]:
    """The jib profile's layers; only the classes layer (the last) depends on `release`."""
    specs = []
    for i, (name, size) in enumerate(JIB_LAYERS):
        seed = 7_000 + i if i < len(JIB_LAYERS) - 1 else 8_000_000 + release
        specs.append(LayerSpec(name, max(1, int(size * scale)), seed, content, gzip_layers))
    return specs


def plain_specs(
    layers: int, layer_size: int, seed: int, content: str, gzip_layers: bool
) -> list[LayerSpec]:
    return sized_specs([layer_size] * layers, seed, content, gzip_layers)


def sized_specs(
    sizes: Sequence[int], seed: int, content: str, gzip_layers: bool
) -> list[LayerSpec]:
    """One layer per size (of its content, before tar framing), in that order."""
    return [
        LayerSpec(f"layer{i}.bin", size, seed * 1000 + i, content, gzip_layers)
        for i, size in enumerate(sizes)
    ]


class PushError(Exception):
    """skopeo could not push the image; the message has its error."""


def push(layout: Path, tag: str, ref: str, tls: bool, prefix: Sequence[str] = ()) -> None:
    """`skopeo copy` the image `tag` of an OCI layout to `docker://ref` (HOST/REPO:TAG).

    --preserve-digests: push the layers as written (skopeo would gzip uncompressed ones).
    `prefix` runs skopeo through another command (e.g. `ip netns exec NS`).
    """
    command = [*prefix, "skopeo", "copy", "--quiet", "--preserve-digests"]
    command += [f"--dest-tls-verify={str(tls).lower()}", f"oci:{layout}:{tag}", f"docker://{ref}"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as exc:
        raise PushError("skopeo is not installed (apt-get install skopeo)") from exc
    except subprocess.CalledProcessError as exc:
        raise PushError(f"pushing to {ref} failed: {exc.stderr.strip()}") from exc
