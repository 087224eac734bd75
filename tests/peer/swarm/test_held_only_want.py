"""A held-only Want (a node that ranks first for a blob asks the next in rendezvous order
whether it has it already): answered with PieceMeta only from a blob held here or fetched from
the registry here now; otherwise refused with NOT_HELD_HEADER, and nothing is started for it
(no registry request, no state kept)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tests.peer.member_node import Member, Setup, link_member, node_and_registry
from wire.events import NOT_HELD_HEADER, PieceMeta, Refused, Want

BLOB = 8 * 64 * 1024  # 8 of the node's 64 KiB pieces


async def _answer(member: Member, digest: str) -> PieceMeta | Refused:
    with trio.fail_after(10):
        while not any(m.digest == digest for m in member.metas):
            await trio.sleep(0.01)
    return next(m for m in member.metas if m.digest == digest)


async def _held_only(setup: Setup, nursery: trio.Nursery, digest: str) -> PieceMeta | Refused:
    member = await link_member(setup, nursery)
    await member.link.send(Want(digest, None, "org/app", None, held_only=True))
    return await _answer(member, digest)


async def test_a_blob_neither_held_nor_fetched_is_refused_and_nothing_starts(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        digest = setup.registry.add_blob(os.urandom(BLOB))
        answer = await _held_only(setup, nursery, digest)
        assert isinstance(answer, Refused)
        assert answer.headers.get(NOT_HELD_HEADER)
        await trio.sleep(0.3)
        assert setup.registry.count("GET", digest) == 0
        assert setup.node.swarm is not None and digest not in setup.node.swarm.digests
        assert not setup.node.store.partial(digest)


async def test_a_held_blob_is_described(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        data = os.urandom(BLOB)
        digest = setup.registry.add_blob(data)
        response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.content == data
        answer = await _held_only(setup, nursery, digest)
        assert isinstance(answer, PieceMeta) and answer.size == BLOB
        assert setup.registry.count("GET", digest) == 1


async def test_a_blob_being_fetched_from_the_registry_is_described(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        data = os.urandom(BLOB)
        digest = setup.registry.add_blob(data)
        gate = setup.registry.gate = trio.Event()
        pulled: list[bytes] = []

        async def pull() -> None:
            pulled.append((await setup.client.get(f"/v2/org/app/blobs/{digest}")).content)

        nursery.start_soon(pull)
        with trio.fail_after(10):
            while not setup.registry.count("GET", digest):
                await trio.sleep(0.01)
        member = await link_member(setup, nursery)
        await member.link.send(Want(digest, None, "org/app", None, held_only=True))
        await trio.sleep(0.2)
        assert not member.metas  # the answer waits for the registry's first bytes
        gate.set()
        answer = await _answer(member, digest)
        assert isinstance(answer, PieceMeta) and answer.size == BLOB
        with trio.fail_after(10):
            while not pulled:
                await trio.sleep(0.01)
        assert pulled == [data]
        assert setup.registry.count("GET", digest) == 1


async def test_a_held_private_blob_looks_not_held_to_a_member_without_credentials(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A refusal that differed (401 for a held private blob, 404 for one not held) would tell
    any member, with no registry request and no log line, which private images a node's
    clients pulled: the answer is the same as for a blob the node never saw."""
    async with node_and_registry(tmp_path, nursery) as setup:
        data = os.urandom(BLOB)
        digest = setup.registry.add_blob(data)
        setup.registry.token = "s3cret"
        headers = {"Authorization": "Bearer s3cret"}
        response = await setup.client.get(f"/v2/org/app/blobs/{digest}", headers=headers)
        assert response.content == data
        never_seen = setup.registry.add_blob(os.urandom(BLOB))
        held = await _held_only(setup, nursery, digest)
        unheld = await _held_only(setup, nursery, never_seen)
        assert isinstance(held, Refused) and isinstance(unheld, Refused)
        assert (held.status, held.headers, held.body) == (
            unheld.status,
            unheld.headers,
            unheld.body,
        )
