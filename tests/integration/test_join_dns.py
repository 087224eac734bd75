"""`--join NAME:PORT` with a name that resolves to several nodes (what a Kubernetes headless
Service does): the node joins every address, so two nodes that each started alone end in one
cluster with it. The name lives in an /etc/hosts of the joining node's own mount namespace
(the host's file is never touched)."""

from __future__ import annotations

from pathlib import Path

from bench.components import Pollen, free_port, wait_for

NAME = "pollen-peers.test"


def test_a_join_by_name_reaches_every_address_it_resolves_to(tmp_path: Path) -> None:
    port = free_port("127.0.0.51")  # the same peer port on every node, as in a DaemonSet
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.51 {NAME}\n127.0.0.52 {NAME}\n")
    in_own_namespace = (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && exec "$@"',
        str(hosts),
    )
    nodes: list[Pollen] = []
    try:
        # Two nodes that each start alone (no --join): two clusters of one.
        for ip in ("127.0.0.51", "127.0.0.52"):
            nodes.append(Pollen(tmp_path / ip, ip=ip, peer_port=port))
        joiner = Pollen(
            tmp_path / "joiner",
            "--join",
            f"{NAME}:{port}",
            ip="127.0.0.53",
            peer_port=port,
            prefix=in_own_namespace,
        )
        nodes.append(joiner)
        wait_for("one cluster of three", lambda: all(n.alive_members() == 2 for n in nodes), 30)
        assert "member" in joiner.log()
    finally:
        for node in nodes:
            node.stop()
