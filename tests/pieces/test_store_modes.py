"""The store on disk is the node's user's alone: private layers and manifests (fetched with
credentials, served only to clients a registry accepts) must not be readable by another local
user of the host, whatever the umask. Every directory the store makes is 0700, every file it
writes 0600; its own directories left looser by an earlier version are tightened at start-up.
The data directory itself, when it exists already, is the operator's and is left as it is.

The tests run as root, so they check the mode bits: a read would always succeed."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import click.testing
import pytest

from peer.cli import main
from pieces.descriptors import Repository
from pieces.store import Store
from tests.pieces.stored_manifests import put_manifest

REGISTRY = "https://registry.example"
SUBDIRS = ("blobs", "blobs/sha256", "partial", "manifests", "manifests/sha256", "tmp", "private")


@pytest.fixture(autouse=True, params=[0o000, 0o002, 0o022], ids=["000", "002", "022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """None (every bit the code asks for), a shared group's, and the one most hosts and
    containers run with (0755 directories, 0644 files): 022 alone would hide a group or
    other write bit the store left."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def open_to_others(root: Path) -> list[str]:
    """Every path below `root` that its group or other users may read, write or traverse."""
    return sorted(
        f"{path.relative_to(root)} {mode_of(path):04o}"
        for path in root.rglob("*")
        if mode_of(path) & 0o077
    )


async def fill(store: Store) -> None:
    """A private blob, a partial left on disk with its record, and a manifest."""
    data = os.urandom(10_000)
    blob = await store.open_partial(digest_of(data), len(data), 4096, [REGISTRY], repository=None)
    blob.write_sync(0, [data])
    blob.verify_sync()
    store.commit_sync(blob)
    store.release_partial(blob)
    assert store.has_blob(digest_of(data)) and store.is_private(digest_of(data))
    left = os.urandom(10_000)
    partial = await store.open_partial(
        digest_of(left), len(left), 4096, [REGISTRY], repository=None
    )
    partial.write_sync(0, [left[:4096]])
    store.release_partial(partial)  # closed: its record saved, left for a resume
    assert partial.data_path.exists() and partial.meta_path.exists()
    body = b'{"schemaVersion":2,"layers":[]}'
    media_type = "application/vnd.oci.image.manifest.v1+json"
    put_manifest(store, digest_of(body), media_type, body, Repository(REGISTRY, "team/app"))


async def test_nothing_the_store_makes_is_open_to_other_users(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "made" / "data"  # the store makes it, and its parent
    await fill(Store(root, 4096))
    assert open_to_others(root) == []
    assert mode_of(root) == 0o700
    assert mode_of(root.parent) == 0o777 & ~umask  # only the data directory is the store's


async def test_an_operators_data_dir_is_left_as_it_is_and_the_store_inside_it_is_closed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o755)  # a hostPath's DirectoryOrCreate, or the operator's own
    await fill(Store(root, 4096))
    assert mode_of(root) == 0o755
    assert open_to_others(root) == []


async def test_looser_store_directories_of_an_earlier_version_are_tightened_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, umask: int
) -> None:
    root = tmp_path / "data"
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / sub, 0o755)
    os.chmod(root / "tmp", 0o1777)  # sticky, as /tmp
    os.chmod(root / "private", 0o2750)  # setgid, as a shared directory
    os.chmod(root, 0o755)
    earlier = root / "blobs" / "sha256" / ("ab" * 32)
    earlier.write_bytes(b"an earlier version's blob")  # 0644: protected by its directory
    with caplog.at_level(logging.INFO, logger="pollen.store"):
        store = Store(root, 4096)
    assert {sub: mode_of(root / sub) for sub in SUBDIRS} == {sub: 0o700 for sub in SUBDIRS}
    assert store.has_blob("sha256:" + earlier.name)  # kept, as it was
    assert earlier.read_bytes() == b"an earlier version's blob"
    assert mode_of(earlier) == 0o666 & ~umask
    assert mode_of(root) == 0o755
    said = [r.getMessage() for r in caplog.records if "0700" in r.getMessage()]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert len(said) == len(SUBDIRS)  # one line each, as it is done
    assert f"{root / 'tmp'} was mode 1777, open to other local users: set to 0700" in said[-2]
    assert f"{root / 'private'} was mode 2750, open to other local users: set to 0700" in said[-1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pollen.store"):
        Store(root, 4096)  # nothing left to tighten: nothing said
    assert not [r for r in caplog.records if "0700" in r.getMessage()]


def test_each_directory_tightened_is_said_as_it_is_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One that cannot be tightened stops the start: those done before it were said."""
    root = tmp_path / "data"
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / sub, 0o755 if sub in ("tmp", "private") else 0o700)
    os.chmod(root, 0o755)
    fchmod = os.fchmod
    calls = []

    def second_fails(fd: int, mode: int) -> None:
        calls.append(mode)
        if len(calls) == 2:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", second_fails)
    with caplog.at_level(logging.INFO, logger="pollen.store"), pytest.raises(OSError):
        Store(root, 4096)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"{root / 'tmp'} was mode 0755, open to other local users: set to 0700 "
        "(the store's directories are the node's user's alone)"
    ]


def test_a_directory_that_cannot_be_tightened_stops_the_start_with_the_clis_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / sub, 0o700)
    os.chmod(root, 0o755)
    os.chmod(root / "private", 0o755)  # an earlier version's

    def refused(*args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)
    monkeypatch.setattr(os, "chmod", refused)
    args = ["run", "--data-dir", str(root), "--peer", "127.0.0.1:0"]
    result = click.testing.CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert (
        f"Error: cannot open the store in {root}: {root / 'private'} is mode 0755, open to "
        "other local users, and cannot be set to 0700: Operation not permitted"
    ) in result.output
    assert mode_of(root / "private") == 0o755


async def test_a_partial_resumed_from_an_earlier_version_is_closed_to_others(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "data", 4096)
    data = os.urandom(10_000)
    partial = await store.open_partial(digest_of(data), len(data), 4096, [], repository=None)
    partial.write_sync(0, [data[:4096]])
    store.release_partial(partial)
    os.chmod(partial.data_path, 0o644)  # as an earlier version made it
    resumed = await Store(tmp_path / "data", 4096).open_partial(
        digest_of(data), len(data), 4096, [], repository=None
    )
    assert resumed.piece_hashes.keys() == {0}
    resumed.write_sync(4096, [data[4096:]])
    resumed.finalize_sync()
    assert mode_of(resumed.complete_path) == 0o600


async def test_a_partial_that_cannot_be_closed_to_others_is_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's data file (EPERM on its fchmod): its pieces are not the node's to
    vouch for. It was refused at every open of the blob, for as long as it stayed."""
    store = Store(tmp_path / "data", 4096)
    data = os.urandom(10_000)
    partial = await store.open_partial(digest_of(data), len(data), 4096, [], repository=None)
    partial.write_sync(0, [data[:4096]])
    store.release_partial(partial)
    os.chmod(partial.data_path, 0o666)
    store = Store(tmp_path / "data", 4096)

    def not_ours(fd: int, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", not_ours)
    fresh = await store.open_partial(digest_of(data), len(data), 4096, [], repository=None)
    assert fresh.piece_hashes == {} and fresh.bytes_present == 0
    assert mode_of(fresh.data_path) == 0o600
    fresh.write_sync(0, [data])
    fresh.finalize_sync()
    assert fresh.complete_path.read_bytes() == data
    assert mode_of(fresh.complete_path) == 0o600
