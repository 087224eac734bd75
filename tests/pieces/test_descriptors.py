"""Blob sizes learned from manifests, per repository: what is read (`read_facts`), what is
skipped, whose word checks what, bounded memory."""

from __future__ import annotations

import json

from pieces.descriptors import DescriptorSizes, Repository
from pieces.manifest_facts import read_facts

GOOD = Repository("https://registry.example", "org/app")
EVIL = Repository("https://registry.client-named.example", "x")  # a registry a client named
TENANT = Repository(GOOD.registry_url, "evil/x")  # another tenant of GOOD's registry


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def learn_manifest(sizes: DescriptorSizes, repository: Repository, body: bytes) -> int:
    """Learn every size a manifest's body gives (as its facts read them); returns how many."""
    descriptors = read_facts(body).descriptors
    for blob, size in descriptors:
        sizes.learn(repository, blob, size)
    return len(descriptors)


def test_an_image_manifest_gives_its_config_and_layer_sizes() -> None:
    sizes = DescriptorSizes()
    body = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": digest(1), "size": 10},
            "layers": [{"digest": digest(2), "size": 20}, {"digest": digest(3), "size": 0}],
            "subject": {"digest": digest(4), "size": 40},
        }
    ).encode()
    assert learn_manifest(sizes, GOOD, body) == 4
    assert [sizes.size_of(GOOD, digest(n)) for n in (1, 2, 3, 4)] == [10, 20, 0, 40]
    assert sizes.size_of(GOOD, digest(5)) is None


def test_an_index_gives_its_manifest_sizes() -> None:
    sizes = DescriptorSizes()
    body = json.dumps({"manifests": [{"digest": digest(7), "size": 700}]}).encode()
    assert learn_manifest(sizes, GOOD, body) == 1
    assert sizes.size_of(GOOD, digest(7)) == 700


def test_what_is_not_a_descriptor_is_skipped() -> None:
    sizes = DescriptorSizes()
    assert learn_manifest(sizes, GOOD, b"not json") == 0
    assert learn_manifest(sizes, GOOD, b"[1, 2]") == 0
    assert learn_manifest(sizes, GOOD, b"[" * 100_000) == 0  # too deep for the parser
    body = json.dumps(
        {
            "layers": [
                {"digest": "blake3:" + "0" * 64, "size": 1},
                {"digest": "sha512:" + "0" * 64, "size": 1},
                {"digest": digest(1), "size": -1},
                {"digest": digest(2), "size": True},
                {"digest": digest(3), "size": "3"},
                {"digest": digest(4)},
                "a string",
            ],
            "config": [],
        }
    ).encode()
    assert learn_manifest(sizes, GOOD, body) == 0
    assert len(sizes) == 0
    sha512 = json.dumps({"layers": [{"digest": "sha512:" + "0" * 128, "size": 1}]}).encode()
    assert learn_manifest(sizes, GOOD, sha512) == 1  # the OCI spec's other algorithm


def test_disagreeing_manifests_leave_the_size_unknown() -> None:
    # One of them lies and we cannot tell which: no check rather than a wrong one.
    sizes = DescriptorSizes()
    sizes.learn(GOOD, digest(1), 100)
    sizes.learn(GOOD, digest(1), 100)
    assert sizes.size_of(GOOD, digest(1)) == 100
    sizes.learn(GOOD, digest(1), 101)
    assert sizes.size_of(GOOD, digest(1)) is None


def test_a_disputed_size_is_never_learned_again() -> None:
    # Two manifests of one repository disagree: were the digest learned anew, the liar could
    # set a wrong size after every honest manifest, and the real blob would be refused from
    # that repository.
    sizes = DescriptorSizes()
    sizes.learn(GOOD, digest(1), 100)  # honest
    sizes.learn(GOOD, digest(1), 101)  # a lie: disputed
    sizes.learn(GOOD, digest(1), 101)  # the lie again
    assert sizes.size_of(GOOD, digest(1)) is None
    for size in (100, 101, 100, 100):
        sizes.learn(GOOD, digest(1), size)
        assert sizes.size_of(GOOD, digest(1)) is None
    assert len(sizes) == 0


def test_the_disputed_digests_are_bounded_and_keep_the_most_recent() -> None:
    sizes = DescriptorSizes(limit=3)
    for n in range(5):
        sizes.learn(GOOD, digest(n), n)
        sizes.learn(GOOD, digest(n), n + 1)
    assert sizes.disputed() == 3
    sizes.learn(GOOD, digest(2), 7)  # disputed again: now the most recent
    sizes.learn(GOOD, digest(5), 5)
    sizes.learn(GOOD, digest(5), 6)
    for n in range(6):
        sizes.learn(GOOD, digest(n), n)
    # 0, 1 and 3 fell out of the disputed set: their sizes can be learned again.
    assert [sizes.size_of(GOOD, digest(n)) for n in range(6)] == [0, 1, None, 3, None, None]


def test_the_table_is_bounded_and_keeps_the_most_recent() -> None:
    sizes = DescriptorSizes(limit=3)
    for n in range(5):
        sizes.learn(GOOD, digest(n), n)
    sizes.learn(GOOD, digest(2), 2)  # seen again: now the most recent
    sizes.learn(GOOD, digest(5), 5)
    assert len(sizes) == 3
    assert [sizes.size_of(GOOD, digest(n)) for n in range(6)] == [None, None, 2, None, 4, 5]


def test_a_stored_manifest_is_learned_once_until_its_sizes_may_be_gone() -> None:
    """A read learns a stored manifest's sizes once (parsing it on every read held the event
    loop), but again once as many sizes have been learned since as the table keeps: they
    may have been pushed out, and the old code's every-read learning put them back (a
    review's find: a size check lost for good)."""
    sizes = DescriptorSizes(limit=3)
    manifest = read_facts(json.dumps({"config": {"digest": digest(1), "size": 10}}).encode())
    stored = "sha256:" + "m" * 64
    assert sizes.due([GOOD], stored) == [GOOD]
    assert sizes.learn_stored_manifest([GOOD], stored, manifest.descriptors) == 1
    assert sizes.due([GOOD], stored) == []  # its reader need not read it again
    assert sizes.learn_stored_manifest([GOOD], stored, manifest.descriptors) == 0
    for n in range(2, 5):  # three newer sizes push it out
        sizes.learn(GOOD, digest(n), n)
    assert sizes.size_of(GOOD, digest(1)) is None
    assert sizes.due([GOOD], stored) == [GOOD]
    assert sizes.learn_stored_manifest([GOOD], stored, manifest.descriptors) == 1
    assert sizes.size_of(GOOD, digest(1)) == 10
    # Served by other repositories too: learned for those that are due, once.
    assert sizes.learn_stored_manifest([GOOD, EVIL, TENANT], stored, manifest.descriptors) == 2
    assert sizes.learn_stored_manifest([GOOD, EVIL, TENANT], stored, manifest.descriptors) == 0
    assert sizes.size_of(EVIL, digest(1)) == 10


def test_a_manifest_of_many_repositories_is_learned_once_though_it_fills_the_table() -> None:
    """Its repositories times its descriptors fill the table more than once: each
    repository's learning was counted against the ones remembered before it, and every
    read learned (and parsed) it again."""
    sizes = DescriptorSizes(limit=4)
    layers = [{"digest": digest(n), "size": n} for n in range(3)]
    manifest = json.dumps({"layers": layers}).encode()
    stored = "sha256:" + "m" * 64
    served = [GOOD, EVIL, TENANT]
    assert sizes.learn_stored_manifest(served, stored, read_facts(manifest).descriptors) == 9
    assert sizes.learn_stored_manifest(served, stored, read_facts(manifest).descriptors) == 0
    assert sizes.learn_stored_manifest(served[1:], stored, read_facts(manifest).descriptors) == 0


def test_a_size_is_the_word_of_its_repository_only() -> None:
    """Any client can make the node read a manifest from a registry it names, or from a
    repository it pushes to on a registry anyone can push to: that repository's size for the
    real digest of another repository's blob checked downloads from the honest one (refused,
    502), and disputed the honest size for good."""
    sizes = DescriptorSizes()
    sizes.learn(EVIL, digest(1), 101)
    sizes.learn(TENANT, digest(1), 102)
    assert sizes.size_of(GOOD, digest(1)) is None  # no word of GOOD's yet: no check
    sizes.learn(GOOD, digest(1), 100)
    assert sizes.size_of(GOOD, digest(1)) == 100
    assert sizes.size_of(EVIL, digest(1)) == 101  # checks only the downloads from EVIL
    assert sizes.size_of(TENANT, digest(1)) == 102  # and from TENANT
    assert sizes.disputed() == 0


def test_a_dispute_holds_for_the_repository_whose_manifests_disagree() -> None:
    sizes = DescriptorSizes()
    sizes.learn(EVIL, digest(1), 100)
    sizes.learn(EVIL, digest(1), 101)
    assert sizes.size_of(EVIL, digest(1)) is None
    sizes.learn(GOOD, digest(1), 100)
    assert sizes.size_of(GOOD, digest(1)) == 100
    sizes.learn(EVIL, digest(1), 100)  # disputed there for good
    assert sizes.size_of(EVIL, digest(1)) is None
    assert sizes.disputed() == 1


def test_the_bound_holds_across_repositories() -> None:
    # Registries a client names, and repositories it pushes to, cost no more than one
    # repository's manifests.
    sizes = DescriptorSizes(limit=3)
    sizes.learn(GOOD, digest(0), 0)
    named = [Repository(f"https://r{n}.example", "x") for n in range(3)]
    named += [Repository(GOOD.registry_url, f"evil/{n}") for n in range(2)]
    for registry in named:
        sizes.learn(registry, digest(0), 1)
    assert len(sizes) == 3
    assert sizes.size_of(GOOD, digest(0)) is None  # the least recent went first
    assert [sizes.size_of(r, digest(0)) for r in named] == [None, None, 1, 1, 1]
    for registry in named:
        sizes.learn(registry, digest(1), 1)
        sizes.learn(registry, digest(1), 2)
    assert sizes.disputed() == 3
