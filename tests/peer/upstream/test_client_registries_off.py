"""`--no-client-registries`: a node that fetches only from the registries its operator gave it.

By default a client's `?ns=HOST` that no `--upstream` maps sends the node to `https://HOST`
(containerd names the registry it pulls from), so any client of the registry port, and any
member by its `Want`s, may make the node ask a registry of its choosing, on a private network
too (README, *Security model*). With the flag, such a namespace is refused before anything is
asked of anyone; the default upstream, Docker Hub (`docker.io`) and the mappings still work.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from peer.access.auth_gate import AuthGate
from peer.config import Address, NodeConfig
from peer.front.routes import InvalidNamespace
from peer.node import Node
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.errors import UpstreamError
from tests.peer.fake_registry import FakeRegistry


def test_a_namespace_no_upstream_maps_is_refused_with_the_flag() -> None:
    upstreams = Upstreams(
        UpstreamConfig(
            mapping={"mapped.test": "https://r.test"},
            default="https://d.test",
            client_registries=False,
        )
    )
    for allowed in (None, "mapped.test", "docker.io"):
        upstreams.check_namespace(allowed)
    for refused in ("other.example", "10.0.0.5:5000", "evil.example:443"):
        try:
            upstreams.check_namespace(refused)
        except InvalidNamespace as exc:
            assert "--no-client-registries" in str(exc)
        else:
            raise AssertionError(f"{refused} was accepted")


def test_by_default_a_client_may_name_a_registry() -> None:
    upstreams = Upstreams(UpstreamConfig(mapping={}, default="https://d.test"))
    upstreams.check_namespace("other.example")


async def test_through_a_node_only_the_operators_registries_are_asked(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=registry.url,
        upstreams={"mapped.test": registry.url},
        client_registries=False,
        prefetch=False,
    )
    port = await nursery.start(Node(config).run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        refused = await client.get("/v2/org/app/manifests/latest?ns=registry.example")
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "NAME_INVALID"
        assert "--no-client-registries" in refused.json()["errors"][0]["message"]
        mapped = await client.get("/v2/org/app/manifests/latest?ns=mapped.test")
        default = await client.get("/v2/org/app/manifests/latest")
    assert mapped.status_code != 400 and default.status_code != 400


async def test_an_access_check_at_an_origin_no_upstream_maps_is_not_made() -> None:
    """A member's Access (or an owner's PieceMeta) may name any origin: with the flag off, the
    access check is not asked of a registry the operator did not give (nothing is served
    unchecked: the peer gets no pieces)."""
    upstreams = Upstreams(
        UpstreamConfig(mapping={}, default="https://d.test", client_registries=False)
    )
    gate = AuthGate(upstreams)
    with pytest.raises(UpstreamError, match="--no-client-registries"):
        await gate.check("https://evil.example", "org/app", "blobs", "sha256:" + "a" * 64, {})
