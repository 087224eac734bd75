"""Clusters of real pollen processes, each on its own 127.0.0.N, pulling the same image at the
same moment through real containerd and skopeo; the registry's log counts every blob fetch."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.components import Cluster, Containerd, Pollen
from peer.cluster.rendezvous import owner_order
from tests.integration.conftest import REPO_NAME, MiB, PushedImage
from tests.integration.relays import ThrottledProxy, curl, sha256_file


def run_at_once(jobs: list[Callable[[], None]]) -> list[BaseException | None]:
    """Run every job in its own thread, all released at the same moment."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException | None] = [None] * len(jobs)

    def runner(i: int) -> None:
        start.wait()
        try:
            jobs[i]()
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return errors


def skopeo_job(node: Pollen, pushed: PushedImage, out: Path) -> Callable[[], None]:
    def job() -> None:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{node.host}/{pushed.repo}:{pushed.tag}",
                f"dir:{out}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        for digest, size in pushed.blobs.items():
            path = out / digest.removeprefix("sha256:")
            assert path.stat().st_size == size and sha256_file(path) == digest

    return job


def containerd_job(ctd: Containerd, pushed: PushedImage) -> Callable[[], None]:
    def job() -> None:
        result = ctd.pull(pushed.ref)
        assert "unpacking linux/amd64" in result.stdout, result.stdout + result.stderr

    return job


def assert_served_by_pollen(nodes: list[Pollen], pushed: PushedImage, pulls: int) -> None:
    """Every pulled blob byte went through pollen (containerd did not fall back around it)."""
    served = sum(
        n.status()["served"]["blob_bytes_from_cache"]
        + n.status()["served"]["blob_bytes_while_downloading"]
        for n in nodes
    )
    assert served >= pulls * sum(pushed.blobs.values())


@pytest.mark.parametrize(("count", "through_containerd"), [(3, 3), (8, 3)])
def test_cluster_pulls_at_once_and_the_registry_serves_each_blob_once(
    pushed: PushedImage,
    cluster_factory: Callable[..., Cluster],
    tmp_path: Path,
    count: int,
    through_containerd: int,
) -> None:
    registry = pushed.registry
    cluster = cluster_factory(count, registry.url, "--upstream", f"{registry.host}={registry.url}")
    cluster.wait_converged()
    containerds = [Containerd() for _ in range(through_containerd)]
    try:
        for ctd, node in zip(containerds, cluster.nodes, strict=False):
            ctd.mirror(registry.host, registry.url, node.url)
        jobs = [containerd_job(ctd, pushed) for ctd in containerds]
        jobs += [
            skopeo_job(node, pushed, tmp_path / f"out{i}")
            for i, node in enumerate(cluster.nodes[through_containerd:])
        ]
        mark = registry.log_mark()
        errors = run_at_once(jobs)
        assert errors == [None] * len(jobs)
    finally:
        for ctd in containerds:
            ctd.close()
    assert registry.blob_copies(mark) == {digest: 1 for digest in pushed.blobs}
    assert_served_by_pollen(cluster.nodes, pushed, count)
    swarm = [n.status()["swarm"] for n in cluster.nodes]
    assert sum(s["bytes_from_peers"] for s in swarm) >= (count - 1) * sum(pushed.blobs.values())
    assert all(s["upstream_fallbacks"] == 0 and s["bad_pieces"] == 0 for s in swarm)
    with urllib.request.urlopen(cluster.nodes[1].admin_url + "/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert 'pollen_peer_bytes_total{direction="in"}' in metrics
    assert f"pollen_members_alive {count}.0" in metrics
    assert "pollen_peer_wasted_bytes_total" in metrics


def _fault_mid_transfer(
    cluster: Cluster,
    pushed: PushedImage,
    tmp_path: Path,
    fault_after: int,
    fault: Callable[[Pollen, list[Pollen]], None],
    idle: int = 0,
) -> tuple[Pollen, list[Pollen]]:
    """Every node but the largest layer's owner (and `idle` others) pulls it; once the owner
    has fetched `fault_after` bytes from the registry, `fault(owner, pullers)` strikes. Every
    pull must complete with the right bytes. Returns the owner and the pullers."""
    cluster.wait_converged()
    digest = pushed.largest_layer
    ids = {n.node_id: n for n in cluster.nodes}
    owner = ids[owner_order(digest, [bytes.fromhex(i) for i in ids])[0].hex()]
    others = [n for n in cluster.nodes if n is not owner][idle:]
    clients = [
        curl(f"{n.url}/v2/{REPO_NAME}/blobs/{digest}", tmp_path / f"blob{i}")
        for i, n in enumerate(others)
    ]
    try:
        deadline = time.monotonic() + 30
        while owner.status()["upstream"]["bytes"] < fault_after:
            assert time.monotonic() < deadline, "the owner never started"
            time.sleep(0.05)
        fault(owner, others)
        codes = [c.wait(timeout=120) for c in clients]
    finally:
        for c in clients:
            c.kill()
            c.wait()
    assert codes == [0] * len(others)
    for i in range(len(others)):
        assert sha256_file(tmp_path / f"blob{i}") == digest
    return owner, others


def test_owner_killed_mid_transfer_every_other_pull_completes(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    proxy = ThrottledProxy(pushed.registry.port, 20 * MiB)
    try:
        cluster = cluster_factory(4, proxy.url, "--upstream-timeout", "10")
        _owner, others = _fault_mid_transfer(
            cluster, pushed, tmp_path, 15 * MiB, lambda owner, _: owner.stop(signal.SIGKILL)
        )
        # The new owner took what the swarm held from peers: the survivors together fetched
        # less than the whole blob from the registry.
        size = pushed.blobs[pushed.largest_layer]
        upstream = sum(n.status()["upstream"]["bytes"] for n in others)
        assert upstream <= size - 4 * MiB, (upstream, size)
        # And it asked the registry for what no survivor held while it took the rest from
        # its peers, not after.
        assert any("that no peer holds from the upstream" in n.log() for n in others)
    finally:
        proxy.close()


def _status_of(observer: Pollen, node_id: str) -> str | None:
    """What `observer`'s gossip believes of the node `node_id` (alive, suspect, dead)."""
    for member in observer.status()["swarm"]["members"]:
        if member["node_id"] == node_id:
            status: str = member["status"]
            return status
    return None


def _deafen_until_buried(owner: Pollen, others: list[Pollen], size: int) -> None:
    """Make the owner's gossip deaf (tests/integration/deaf_node.py) and wait until every
    other node holds it dead, while it is still fetching."""
    assert owner.proc is not None
    owner.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    owner_id = owner.node_id
    while any(_status_of(n, owner_id) != "dead" for n in others):
        assert time.monotonic() < deadline, "gossip never buried the deaf owner"
        time.sleep(0.1)
    # Buried mid-transfer, or this test tests nothing.
    assert owner.status()["upstream"]["bytes"] < size - 8 * MiB


def test_an_owner_gossip_buries_while_its_links_work_keeps_its_blob_and_the_registry_sends_it_once(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Gossip's word that the owner died is not enough to take its blob over while the
    owner's link to us still works: on the 16-host testbed a CPU-starved owner was buried by
    gossip while it fetched, and the next node in rendezvous order fetched the same layer
    from the registry again. Here the owner's gossip goes deaf mid-transfer (it answers no
    probe, refutes nothing) while its links carry pieces as before. The nodes that pull hear
    it on their links and do not bury it themselves (`Membership.heard_on_link`); an idle
    node with no link to it does, and its word reaches them."""
    proxy = ThrottledProxy(pushed.registry.port, 3 * MiB)  # the 72 MiB layer takes ~24 s
    size = pushed.blobs[pushed.largest_layer]
    try:
        deaf = {i: "tests.integration.deaf_node" for i in range(5)}  # honest until SIGUSR1
        cluster = cluster_factory(5, proxy.url, "--upstream-timeout", "10", modules=deaf)
        _owner, others = _fault_mid_transfer(
            cluster,
            pushed,
            tmp_path,
            4 * MiB,
            lambda owner, pullers: _deafen_until_buried(owner, pullers, size),
            idle=1,
        )
        upstream = {n.node_id[:12]: n.status()["upstream"]["bytes"] for n in cluster.nodes}
        assert sum(upstream.values()) == size, upstream
        assert not any("that no peer holds from the upstream" in n.log() for n in others)
    finally:
        proxy.close()


def test_an_owner_frozen_mid_transfer_is_left_once_silent_and_every_other_pull_completes(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """SIGSTOP: the owner's links stay open but say nothing (a host that vanished without
    resetting its connections), gossip buries it; once it has been silent for OWNER_SILENT
    the fetches leave it and the next owner takes the blob over."""
    proxy = ThrottledProxy(pushed.registry.port, 3 * MiB)
    frozen: list[tuple[Pollen, str]] = []

    def freeze(owner: Pollen, others: list[Pollen]) -> None:
        assert owner.proc is not None
        frozen.append((owner, owner.node_id))  # it answers no status request once stopped
        owner.proc.send_signal(signal.SIGSTOP)

    try:
        cluster = cluster_factory(4, proxy.url, "--upstream-timeout", "10")
        _owner, others = _fault_mid_transfer(cluster, pushed, tmp_path, 4 * MiB, freeze)
        assert all(_status_of(n, frozen[0][1]) == "dead" for n in others)
        assert any("that no peer holds from the upstream" in n.log() for n in others)
    finally:
        for owner, _ in frozen:
            assert owner.proc is not None
            owner.proc.send_signal(signal.SIGCONT)  # so that it can be stopped
        proxy.close()


def test_a_node_that_reaches_no_owner_fetches_from_the_upstream_and_counts_it(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(2, pushed.registry.url)
    cluster.wait_converged()
    digest = pushed.largest_layer
    first, second = cluster.nodes
    owner_id = owner_order(digest, [bytes.fromhex(first.node_id), bytes.fromhex(second.node_id)])
    owner, asker = (first, second) if owner_id[0].hex() == first.node_id else (second, first)
    mark = pushed.registry.log_mark()
    owner.stop(signal.SIGKILL)  # gossip still lists it as alive for a few seconds
    client = curl(f"{asker.url}/v2/{REPO_NAME}/blobs/{digest}", tmp_path / "blob")
    try:
        assert client.wait(timeout=120) == 0
    finally:
        client.kill()
        client.wait()
    assert sha256_file(tmp_path / "blob") == digest
    assert asker.status()["swarm"]["upstream_fallbacks"] == 1
    assert pushed.registry.blob_copies(mark) == {digest: 1}
    assert "falling back to the upstream" in asker.log()


def test_a_peer_serving_corrupt_pieces_is_banned_and_pulls_complete(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(3, pushed.registry.url, modules={2: "tests.integration.lying_node"})
    cluster.wait_converged()
    honest, corrupt = cluster.nodes[:2], cluster.nodes[2]
    # The corrupt node gets the image first, so it holds every piece to offer.
    skopeo_job(corrupt, pushed, tmp_path / "warm")()
    errors = run_at_once(
        [skopeo_job(n, pushed, tmp_path / f"out{i}") for i, n in enumerate(honest)]
    )
    assert errors == [None, None]
    swarm = [n.status()["swarm"] for n in honest]
    assert sum(s["bad_pieces"] for s in swarm) >= 1
    # Banned once the blob it sent a bad piece of verifies (peer/swarm/blame.py): a moment
    # after the pull's last byte, at the download's end.
    deadline = time.monotonic() + 10
    while not any(corrupt.node_id in n.status()["swarm"]["banned"] for n in honest):
        assert time.monotonic() < deadline, "the corrupt node was never banned"
        time.sleep(0.1)


def test_a_node_with_the_wrong_token_is_refused_and_gets_no_piece(
    pushed: PushedImage, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory(2, pushed.registry.url, "--cluster-token", "right")
    cluster.wait_converged()
    intruder = Pollen(
        tmp_path / "intruder",
        "--default-upstream",
        pushed.registry.url,
        "--cluster-token",
        "wrong",
        "--join",
        cluster.nodes[0].peer,
        ip="127.0.0.30",
    )
    try:
        skopeo_job(cluster.nodes[0], pushed, tmp_path / "member")()
        time.sleep(3)  # several gossip rounds: the intruder's datagrams fail their MAC
        skopeo_job(intruder, pushed, tmp_path / "intruder-out")()
        status = intruder.status()
        assert status["swarm"]["members"] == []
        assert status["swarm"]["bytes_from_peers"] == 0
        for node in cluster.nodes:
            members = node.status()["swarm"]["members"]
            assert intruder.node_id not in {m["node_id"] for m in members}
            assert node.status()["swarm"]["bytes_to_peers"] >= 0
        assert "no --cluster-token" not in intruder.log()
    finally:
        intruder.stop()
