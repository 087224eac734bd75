from __future__ import annotations

from pathlib import Path

from bench.oci_image import plain_specs, write_layers
from bench.simulate.image import config_size, image_blobs, plain_layer_sizes


def test_layer_and_config_sizes_are_those_bench_image_writes(tmp_path: Path) -> None:
    for size, layers in ((3000, 3), (100_000, 2), (1_234_567, 1)):
        written = write_layers(
            tmp_path / str(size), plain_specs(layers, size // layers, 7, "random", False), "t"
        )
        assert [d.size for d in written.layers] == plain_layer_sizes(size, layers)
        assert written.config.size == config_size(layers)


def test_blobs_are_the_config_then_the_layers_with_distinct_digests() -> None:
    blobs = image_blobs([10, 10, 20])
    assert [b.kind for b in blobs] == ["config", "layer", "layer", "layer"]
    assert len({b.digest for b in blobs}) == 4
