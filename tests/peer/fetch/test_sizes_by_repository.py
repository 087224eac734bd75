"""A size a manifest gives a blob constrains only the downloads of that blob from the
repository the manifest came from, at its registry.

The sizes were learned from every manifest the node read, whatever its registry, and any
client can have the node read one from a registry it names (`?ns=`): its manifest gave the
real digest of a layer of the default registry a wrong size, and from then on that layer was
refused (502) when pulled from the default registry, and when taken from a peer that held it,
until a manifest with the true size came by. Keyed by registry, the same held within one
registry anyone can push to (Docker Hub, GHCR, a shared Harbor): one tenant's manifest gave
another tenant's layer a wrong size. A real node (and a cluster of two), fake registries; the
attacker's registry is mapped with --upstream, as a registry on loopback cannot be one only a
client names (the node refuses those), and the sizes' rule makes no difference between the
two. The fake registry serves any manifest under any repository: the attacker's repository
is another tenant's on the same registry.

"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import httpx
import pytest
import trio

from bench.components import free_ports
from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry, digest_of, node_config
from tests.peer.swarm.real_nodes import (
    BLOB,
    PIECE,
    TOKEN,
    blob_where,
    first_of,
    knows,
    running,
    until,
)

EVIL = "evil.test"
# Where the attacker's manifest is read: a registry a client names, or another repository of
# the default registry (a tenant of a registry anyone can push to).
ATTACKERS = {
    "named-registry": f"/v2/x/manifests/{{}}?ns={EVIL}",
    "tenant": "/v2/evil/x/manifests/{}",
}


def lying_manifest(digest: str, size: int) -> bytes:
    """An image manifest that gives `digest` (a layer of another registry) a wrong size."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "c", "digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": "l", "digest": digest, "size": size}],
        }
    ).encode()


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_an_attackers_manifest_does_not_fail_another_repositorys_blob(
    tmp_path: Path, nursery: trio.Nursery, attacker: str
) -> None:
    good, evil = FakeRegistry(), FakeRegistry()
    await nursery.start(good.serve)
    await nursery.start(evil.serve)
    layer = os.urandom(150_000)
    digest = good.add_blob(layer)
    lies_at = good if attacker == "tenant" else evil
    lie = lies_at.add_manifest("t", lying_manifest(digest, len(layer) + 1))
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={EVIL: evil.url},
        default_upstream=good.url,
        prefetch=False,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        # The attacker: its manifest read from its repository, then from the cache by a
        # request that names the victim's (stored manifests are learned on read).
        assert (await client.get(ATTACKERS[attacker].format("t"))).status_code == 200
        assert (await client.get(f"/v2/org/app/manifests/{lie}")).status_code == 200
        # Every other client: the layer from the default registry.
        response = await client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code == 200, response.text
        assert response.content == layer


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_an_attackers_manifest_does_not_fail_a_peers_transfer(
    tmp_path: Path, nursery: trio.Nursery, attacker: str
) -> None:
    """The blob's owner holds it from the default registry; a node where the attacker had
    its manifest read takes it from the owner (the owner's PieceMeta gives the true size)."""
    good, evil = FakeRegistry(), FakeRegistry()
    await nursery.start(good.serve)
    await nursery.start(evil.serve)

    owner_port, other_port = free_ports(2)

    def member(name: str, port: int, join: tuple[Address, ...] = ()) -> Node:
        config = node_config(
            good,
            tmp_path / name,
            peer=Address("127.0.0.1", port),
            join=join,
            cluster_token=TOKEN,
            piece_size=PIECE,
            prefetch=False,
        )
        return Node(dataclasses.replace(config, upstreams={**config.upstreams, EVIL: evil.url}))

    owner = member("owner", owner_port)
    other = member("other", other_port, join=(Address("127.0.0.1", owner_port),))
    data = blob_where(lambda d: first_of(d, owner, other) == owner.node_id)
    digest = good.add_blob(data)
    lies_at = good if attacker == "tenant" else evil
    lies_at.add_manifest("t", lying_manifest(digest, BLOB - 1))
    async with running(owner, nursery) as a, running(other, nursery) as b:
        await until(lambda: knows(owner, other) and knows(other, owner))
        assert await a.pull(digest) == data
        assert (await b.client.get(ATTACKERS[attacker].format("t"))).status_code == 200
        assert await b.pull(digest) == data
    assert good.count("GET", digest) == 1, "the blob did not come from its owner"
