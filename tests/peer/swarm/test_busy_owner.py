"""An owner whose registry answers 502, 503 or 504 (overloaded, or a proxy in front of it
down) asks it again after a wait while the nodes that asked it for the blob wait for that
download, instead of failing it at once and sending every one of them to the registry at the
same moment (the load that made it fail). Real nodes on loopback with a fake registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from peer.fetch.busy_registry import (
    BUSY_DEADLINE,
    BUSY_MEMORY,
    BUSY_STATUSES,
    BUSY_WAITS,
    busy_retry_wait,
    still_busy,
)
from peer.metrics import NodeMetrics
from tests.peer.swarm import real_nodes as cluster
from tests.peer.swarm.real_nodes import Running


async def test_nodes_wait_for_an_owner_whose_registry_is_busy_rather_than_all_asking_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, owner = await cluster.registry_and_seed(tmp_path, nursery)
    assert owner.config.peer is not None
    others = [
        cluster.make_node(registry, tmp_path / name, join=(owner.config.peer,))
        for name in ("b", "c")
    ]
    data = cluster.blob_where(lambda d: cluster.first_of(d, owner, *others) == owner.node_id)
    digest = registry.add_blob(data)
    # The owner's first GET waits at the gate until both nodes asked the owner, then is
    # answered 503; the registry serves every later one.
    registry.gate = trio.Event()
    registry.busy_gets = 1
    pulled: list[bytes] = []

    async def pull(node: Running) -> None:
        pulled.append(await node.pull(digest))

    async with (
        cluster.running(owner, nursery),
        cluster.running(others[0], nursery) as b,
        cluster.running(others[1], nursery) as c,
    ):
        await cluster.until(
            lambda: cluster.knows(owner, *others) and all(cluster.knows(o, owner) for o in others)
        )
        assert owner.swarm is not None
        states = owner.swarm.digests
        async with trio.open_nursery() as pulls:
            pulls.start_soon(pull, b)
            pulls.start_soon(pull, c)
            await cluster.until(lambda: digest in states and len(states[digest].answering) == 2)
            registry.gate.set()
    assert pulled == [data, data]
    # The owner's busy GET and its next one: neither other node asked the registry.
    assert registry.count("GET", digest) == 2


async def test_a_registry_busy_for_good_gets_the_owners_asks_and_one_per_other_node(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The owner gives up after its waits; the node that asked it then asks the registry once
    itself (it does not wait again: the owner did), and its client gets the failure. Asked
    again at once, the owner remembers the registry busy and does not wait again either."""
    registry, owner = await cluster.registry_and_seed(tmp_path, nursery)
    assert owner.config.peer is not None
    other = cluster.make_node(registry, tmp_path / "b", join=(owner.config.peer,))
    data = cluster.blob_where(lambda d: cluster.first_of(d, owner, other) == owner.node_id)
    digest = registry.add_blob(data)
    registry.busy_gets = 100
    async with cluster.running(owner, nursery), cluster.running(other, nursery) as b:
        await cluster.until(lambda: cluster.knows(owner, other) and cluster.knows(other, owner))
        response = await b.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code >= 500
        assert registry.count("GET", digest) == 1 + len(BUSY_WAITS) + 1
        response = await b.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code >= 500
        assert registry.count("GET", digest) == 1 + len(BUSY_WAITS) + 1 + 2
        assert owner.downloads is not None and owner.front is not None and owner.swarm
        metrics = NodeMetrics(owner.store, owner.downloads, owner.front.served, owner.swarm)
        text = metrics.render()[1].decode()
        assert f"pollen_upstream_busy_retries_total {float(len(BUSY_WAITS))}" in text


def test_only_a_busy_answer_before_the_blob_opened_is_asked_again_for_a_while() -> None:
    def wait(status: int | None, failures: int, **kwargs: float) -> float | None:
        settings = {"started": False, "elapsed": 0.0, "answer_took": 0.0, "chance": 0.5} | kwargs
        return busy_retry_wait(status, failures, **settings)  # type: ignore[arg-type]

    for busy in BUSY_STATUSES:
        assert [wait(busy, n) for n in range(1, len(BUSY_WAITS) + 2)] == [*BUSY_WAITS, None]
        assert wait(busy, 1, started=True) is None  # readers are served already
        assert wait(busy, 1, chance=0.0) == BUSY_WAITS[0] / 2  # owners do not come back together
        assert wait(busy, 1, chance=0.999) == pytest.approx(BUSY_WAITS[0] * 1.5, rel=1e-2)
        # The nodes waiting for the download give up on the owner's answer after 30 s.
        assert wait(busy, 1, elapsed=BUSY_DEADLINE - BUSY_WAITS[0]) is None
        # ... and the next answer may take as long as the last one did.
        assert wait(busy, 1, elapsed=5.0, answer_took=5.0) == BUSY_WAITS[0]
        assert wait(busy, 1, elapsed=14.0, answer_took=14.0) is None
    for other in (None, 400, 429, 500):  # not an answer (a broken connection), or not busy
        assert wait(other, 1) is None
    assert still_busy(100.0 + BUSY_MEMORY, 100.0 + BUSY_MEMORY - 0.1)
    assert not still_busy(100.0 + BUSY_MEMORY, 100.0 + BUSY_MEMORY)
    assert not still_busy(None, 0.0)
