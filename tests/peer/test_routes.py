from __future__ import annotations

import pytest

from peer.routes import AdminRoute, ApiRoot, BlobRoute, ManifestRoute, NotFound, parse_target

DIGEST = "sha256:" + "0f" * 32


@pytest.mark.parametrize(
    ("target", "route", "ns"),
    [
        (b"/v2/", ApiRoot(), None),
        (b"/v2", ApiRoot(), None),
        (b"/v2/alpine/manifests/3.19", ManifestRoute("alpine", "3.19"), None),
        (
            b"/v2/library/alpine/manifests/latest?ns=docker.io",
            ManifestRoute("library/alpine", "latest"),
            "docker.io",
        ),
        (
            f"/v2/a/b/c-d/e_f/manifests/{DIGEST}".encode(),
            ManifestRoute("a/b/c-d/e_f", DIGEST),
            None,
        ),
        (
            f"/v2/org/app/blobs/{DIGEST}?ns=127.0.0.1%3A5000".encode(),
            BlobRoute("org/app", DIGEST),
            "127.0.0.1:5000",
        ),
        (b"/v2/org/app/blobs/notadigest", BlobRoute("org/app", "notadigest"), None),
        (b"/healthz", AdminRoute("healthz"), None),
        (b"/_pollen/status", AdminRoute("status"), None),
        (b"/metrics", AdminRoute("metrics"), None),
        (b"/v2/UPPER/manifests/x", NotFound("/v2/UPPER/manifests/x"), None),
        (b"/v2/a//b/manifests/x", NotFound("/v2/a//b/manifests/x"), None),
        (b"/v2/a/tags/list", NotFound("/v2/a/tags/list"), None),
        (b"/v2/../etc/blobs/x", NotFound("/v2/../etc/blobs/x"), None),
    ],
)
def test_parse_target(target: bytes, route: object, ns: str | None) -> None:
    parsed = parse_target(target)
    assert parsed.route == route
    assert parsed.namespace == ns
