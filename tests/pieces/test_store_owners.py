"""The store's directories are the node's user's, and the data directory is no other user's to
write to: a node (root, often) whose data directory another user made first or may write to
(`--data-dir /tmp/pollen`) must neither change a directory a planted symbolic link points to
(`tmp -> /` made `/` 0700, and the start-up clean-up emptied it) nor take a directory another
user owns as its own (what they drop in `blobs/sha256/` would be served as a verified blob).
A symbolic link to a directory of the node's user is taken: blobs on another disk.

The tests run as root: another user's directory is one chowned to OTHER."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from pieces.store import Store

OTHER = 54321  # a uid that is neither root nor the node's


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def victim(path: Path, mode: int, owner: int) -> Path:
    """A directory with a file in it, that the store must leave as it is."""
    path.mkdir()
    (path / "keep").write_bytes(b"not the store's")
    os.chmod(path, mode)
    os.chown(path, owner, owner)
    return path


def untouched(path: Path, mode: int) -> bool:
    return mode_of(path) == mode and (path / "keep").read_bytes() == b"not the store's"


def test_a_store_directory_linked_to_another_users_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    target = victim(tmp_path / "theirs", 0o777, OTHER)
    (root / "tmp").symlink_to(target)
    said = f"{root / 'tmp'} (a link to {target}) is owned by uid {OTHER}, not by the node's user"
    with pytest.raises(OSError, match=re.escape(said)):
        Store(root, 4096)
    assert untouched(target, 0o777)


def test_a_link_another_user_planted_is_refused_even_to_a_directory_of_the_node(
    tmp_path: Path,
) -> None:
    """`--data-dir /tmp`-like (sticky, anyone may add entries): the link's target is root's,
    as `/` is, and must not be tightened nor emptied."""
    root = tmp_path / "data"
    root.mkdir()
    os.chmod(root, 0o1777)
    target = victim(tmp_path / "roots", 0o755, 0)
    (root / "tmp").symlink_to(target)
    os.lchown(root / "tmp", OTHER, OTHER)
    with pytest.raises(OSError, match=f"{root / 'tmp'} is a symbolic link owned by uid {OTHER}"):
        Store(root, 4096)
    assert untouched(target, 0o755)


def test_a_store_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    planted = b"served as verified"
    (blobs / hashlib.sha256(planted).hexdigest()).write_bytes(b"something else")
    os.chown(blobs, OTHER, OTHER)
    with pytest.raises(OSError, match=f"{blobs} is owned by uid {OTHER}, not by the node's user"):
        Store(root, 4096)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_data_directory_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "data"
    root.mkdir()
    os.chmod(root, mode)
    with pytest.raises(OSError, match=f"the data directory {root} is mode {mode:04o}"):
        Store(root, 4096)
    assert mode_of(root) == mode
    assert list(root.iterdir()) == []


def test_a_sticky_data_directory_is_taken_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    os.chmod(root, 0o1777)  # a tmpfs' root, /tmp
    Store(root, 4096)
    assert mode_of(root) == 0o1777


def test_a_data_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    os.chown(root, OTHER, OTHER)
    with pytest.raises(OSError, match=f"the data directory {root} is owned by uid {OTHER}"):
        Store(root, 4096)
    assert list(root.iterdir()) == []


def test_a_data_directory_linked_by_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    root = tmp_path / "data"
    root.symlink_to(tmp_path / "real")
    os.lchown(root, OTHER, OTHER)
    with pytest.raises(OSError, match=f"{root} is a symbolic link owned by uid {OTHER}"):
        Store(root, 4096)


def test_a_data_directory_of_root_serves_a_node_of_another_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node runs as OTHER (a systemd DynamicUser, say) in root's directory: its own
    directories are OTHER's."""
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    for sub in ("blobs", "blobs/sha256", "partial", "manifests", "manifests/sha256", "tmp"):
        (root / sub).mkdir(mode=0o700)
        os.chown(root / sub, OTHER, OTHER)
    (root / "private").mkdir(mode=0o755)
    os.chown(root / "private", OTHER, OTHER)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER)
    Store(root, 4096)
    assert mode_of(root / "private") == 0o700


async def test_a_link_to_a_directory_of_the_node_is_taken(tmp_path: Path) -> None:
    """Blobs on another disk: `blobs -> /mnt/big/blobs`, the node's user's."""
    disk = tmp_path / "big" / "blobs"
    disk.mkdir(parents=True, mode=0o755)
    os.chmod(disk, 0o755)
    root = tmp_path / "data"
    root.mkdir()
    (root / "blobs").symlink_to(disk)
    store = Store(root, 4096)
    assert mode_of(disk) == 0o700 and mode_of(root / "blobs") == 0o777  # the link's own
    data = os.urandom(10_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = await store.open_partial(digest, len(data), 4096, [], repository=None)
    blob.write_sync(0, [data])
    blob.finalize_sync()
    store.release_partial(blob)
    assert (disk / "sha256" / digest[7:]).read_bytes() == data
    Store(root, 4096)  # and again, as it is now
