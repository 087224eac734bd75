"""A reload (SIGHUP) on a running node, in process: a step that fails leaves the node running
with what it had; systemd hears READY=1 after a reload only if the node was ready before."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path

import pytest
import trio

from bench.components import free_port
from peer.config import Address, NodeConfig
from peer.node import Node
from peer.service.notify import Notifier
from pieces.partial import NoRoom
from pieces.room import Watermarks
from pieces.store import CachePolicy
from tests.peer.fake_registry import FakeRegistry


def _config(tmp_path: Path, registry: FakeRegistry) -> NodeConfig:
    return NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=registry.url,
        cache_size=2**30,
    )


async def test_a_reload_that_cannot_be_applied_leaves_the_node_as_it_was(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = _config(tmp_path, registry)
    smaller = dataclasses.replace(config, cache_size=2**20, upload_rate=10**6)
    node = Node(config, reread_config=lambda: smaller)
    await nursery.start(node.run)

    def no_room(*_args: object, **_kwargs: object) -> None:
        raise NoRoom("downloads in flight hold what the disk has")

    monkeypatch.setattr(node.store, "sweep", no_room)
    with caplog.at_level(logging.ERROR):
        node.reload()  # a NoRoom here used to end the node
    assert "reload failed" in caplog.text and "downloads in flight" in caplog.text
    assert node.config.cache_size == 2**30 and node.store.quota == 2**30


async def test_a_reload_applies_the_cache_ttl_and_watermarks(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = _config(tmp_path, registry)
    tighter = dataclasses.replace(config, cache_ttl=3600.0, disk_high=0.9, disk_low=0.8)
    node = Node(config, reread_config=lambda: tighter)
    await nursery.start(node.run)
    assert node.store.policy == CachePolicy()
    node.reload()
    assert node.store.policy == CachePolicy(ttl=3600.0, marks=Watermarks(0.9, 0.8))
    assert node.config.cache_ttl == 3600.0


async def test_a_reload_while_joining_does_not_say_ready(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a seed that never answers
    silent.bind(("127.0.0.1", 0))
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    systemd.setblocking(False)
    with silent, systemd:
        config = dataclasses.replace(
            _config(tmp_path, registry),
            peer=Address("127.0.0.1", free_port()),
            join=(Address("127.0.0.1", silent.getsockname()[1]),),
        )
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        node = Node(config, reread_config=lambda: config, notifier=notifier)
        await nursery.start(node.run)
        node.reload()
        await trio.sleep(0.2)
        said = []
        while True:
            try:
                said.append(systemd.recv(4096).decode())
            except BlockingIOError:
                break
        assert any("RELOADING=1" in m for m in said)
        assert not any("READY=1" in m.splitlines() for m in said), said
        assert not node.readiness()[0]


async def test_a_reload_with_a_broken_auth_file_keeps_the_logins_it_had(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"r.example": {"username": "u", "password": "p"}}}')
    config = dataclasses.replace(_config(tmp_path, registry), auth_file=auth)
    node = Node(config, reread_config=lambda: config)
    await nursery.start(node.run)
    before = node.node_auth.credentials
    auth.write_text("{ half written")  # a secret being rotated, caught mid-write
    with caplog.at_level(logging.ERROR):
        node.reload()  # used to read the file again in its rollback, and end the node
    assert "reload failed" in caplog.text and "not JSON" in caplog.text
    assert node.node_auth.credentials is before


async def test_a_reload_of_the_upload_rate_changes_what_the_node_declares(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = dataclasses.replace(
        _config(tmp_path, registry), peer=Address("127.0.0.1", 0), upload_rate=10_000_000
    )
    slower = dataclasses.replace(config, upload_rate=2_000_000)
    node = Node(config, reread_config=lambda: slower)
    await nursery.start(node.run)
    assert node.membership is not None and node.membership.capacity == 10_000_000
    node.reload()
    assert node.membership.capacity == 2_000_000  # told to the cluster with its updates


async def test_a_reload_names_the_congestion_control_of_the_links(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = dataclasses.replace(_config(tmp_path, registry), peer=Address("127.0.0.1", 0))
    named = dataclasses.replace(config, peer_congestion_control="reno")
    refused = dataclasses.replace(config, peer_congestion_control="nosuchalgo")
    rereads = iter([named, refused, config])
    node = Node(config, reread_config=lambda: next(rereads))
    await nursery.start(node.run)
    assert node.swarm is not None and node.swarm.applied_congestion_control == "cubic"
    node.reload()
    assert node.swarm.applied_congestion_control == "reno"
    node.reload()  # a name the kernel refuses: the reload fails, the running one stays
    assert node.swarm.applied_congestion_control == "reno"
    node.reload()  # no name again: the preferred one
    assert node.swarm.applied_congestion_control == "cubic"


async def test_a_reload_turns_client_registries_off_and_on(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = _config(tmp_path, registry)
    closed = dataclasses.replace(config, client_registries=False)
    settings = [closed, config]
    node = Node(config, reread_config=lambda: settings.pop(0))
    await nursery.start(node.run)
    node.upstreams.check_namespace("registry.example")  # by default, a client may name one
    node.reload()
    with pytest.raises(ValueError, match="--no-client-registries"):
        node.upstreams.check_namespace("registry.example")
    node.reload()
    node.upstreams.check_namespace("registry.example")
