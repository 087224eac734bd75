from __future__ import annotations

import contextlib
import urllib.parse

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.front.routes import (
    AdminRoute,
    ApiRoot,
    BadRoute,
    BlobRoute,
    InvalidNamespace,
    ManifestRoute,
    NotFound,
    ReferrersRoute,
    TagsRoute,
    parse_target,
)

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
        (
            b"/v2/UPPER/manifests/x",
            BadRoute(400, "NAME_INVALID", "not a repository name: 'UPPER'"),
            None,
        ),
        (
            b"/v2/a//b/manifests/x",
            BadRoute(400, "NAME_INVALID", "not a repository name: 'a//b'"),
            None,
        ),
        (
            b"/v2/../etc/blobs/x",
            BadRoute(400, "NAME_INVALID", "not a repository name: '../etc'"),
            None,
        ),
        (b"/v2/_catalog", NotFound("/v2/_catalog"), None),
        (b"/v2/a/tags/list", TagsRoute("a"), None),
        (
            b"/v2/a/b/tags/list?n=10&last=v1.2&ns=ghcr.io",
            TagsRoute("a/b", (("n", "10"), ("last", "v1.2"))),
            "ghcr.io",
        ),
        (
            b"/v2/a/tags/list?n=2&next_page=tok",
            TagsRoute("a", (("n", "2"), ("next_page", "tok"))),
            None,
        ),
        (
            b"/v2/a/manifests/bad!tag",
            BadRoute(404, "MANIFEST_UNKNOWN", "not a tag or a digest: 'bad!tag'"),
            None,
        ),
        (f"/v2/a/referrers/{DIGEST}".encode(), ReferrersRoute("a", DIGEST, None), None),
        (
            f"/v2/a/referrers/{DIGEST}?artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson&ns=ghcr.io".encode(),
            ReferrersRoute("a", DIGEST, "application/vnd.dev.cosign.artifact.sig.v1+json"),
            "ghcr.io",
        ),
    ],
)
def test_parse_target(target: bytes, route: object, ns: str | None) -> None:
    parsed = parse_target(target)
    assert parsed.route == route
    assert parsed.namespace == ns


@pytest.mark.parametrize(
    "ns",
    [
        "docker.io",
        "registry-1.docker.io",
        "127.0.0.1:5000",
        "[::1]:5000",
        "[::1]",
        "localhost:1",
        "Reg.Example:65535",
        "a" * 63 + ".io",
    ],
)
def test_valid_namespaces(ns: str) -> None:
    assert parse_target(f"/v2/?ns={urllib.parse.quote(ns)}".encode()).namespace == ns


@pytest.mark.parametrize(
    "ns",
    [
        "[",  # urlsplit: "Invalid IPv6 URL"
        "example.com:99999",  # urlsplit: "Port out of range"
        "example.com:0",
        "example.com:",
        "example.com:http",
        "a\x00b",
        "a\nb",
        "\x7f",
        "caf\u00e9.example",
        "r\u00e9g.test:5000",
        "user@example.com",
        "example.com/path",
        "example.com?x",
        "example.com#x",
        "a..b",  # idna: empty label
        "a" * 64 + ".io",  # idna: label too long
        "-a.io",
        ".io",
        "io.",
        "[::1",
        "[fe80::1%eth0]",
        "[1.2.3.4]",
        "::1",
        " docker.io",
    ],
)
def test_invalid_namespaces_are_refused(ns: str) -> None:
    with pytest.raises(InvalidNamespace):
        parse_target(f"/v2/org/app/blobs/{DIGEST}?ns={urllib.parse.quote(ns)}".encode())


@given(st.text(max_size=80))
def test_any_accepted_namespace_makes_a_url_the_clients_accept(ns: str) -> None:
    try:
        target = parse_target(f"/v2/?ns={urllib.parse.quote(ns)}".encode())
    except InvalidNamespace:
        return
    if target.namespace is None:
        return
    # What blob_stream and httpx do with it must not raise.
    parts = urllib.parse.urlsplit(f"https://{target.namespace}/v2/")
    assert parts.hostname and parts.hostname.isascii()
    assert parts.port is None or 0 < parts.port < 65536
    assert parts.path == "/v2/" and not parts.username
    httpx.URL(f"https://{target.namespace}/v2/")


@given(st.binary(max_size=200))
def test_any_target_parses_or_is_an_invalid_namespace(raw: bytes) -> None:
    with contextlib.suppress(InvalidNamespace):
        parse_target(raw)
