"""File modes and owners of the store: what it keeps on disk is the node's user's alone.

Private layers and manifests (fetched with credentials, served only to the clients a registry
accepts) lie in the store as plain files: a local user of the host who could read them would
go around the node's access check; one who could write to the store's directories could put
files there that are served as verified blobs. So, whatever the process umask, every
directory the store makes is DIR_MODE and every file it writes FILE_MODE; the store's own
directories are the node's user's (another user's, or a symbolic link to one, is refused)
and, found looser (made by an earlier version), are set DIR_MODE (`close_dir`). The
data directory itself is the operator's: left as it is, but refused when another user could
replace what it holds (`check_data_dir`).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
OTHERS = 0o077  # what the group and other users may do
OTHERS_WRITE = 0o022


class UnsafeDirectory(OSError):
    """A directory the store would use that other users could write to or replace (another
    user's, or open to others with no sticky bit), or one it cannot close to them."""


def make_dir(path: Path) -> bool:
    """Make the directory `path` DIR_MODE (the umask can only take more away); its missing
    parents get the default mode (the umask's), as `mkdir -p` makes them: they are not the
    store's. True when `path` was made; False when it was there (left as it is).

    Raises:
        FileExistsError: `path` is there and not a directory.
    """
    try:
        os.mkdir(path, DIR_MODE)
    except FileNotFoundError:
        if path.parent == path:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_dir(path)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def user_name(uid: int) -> str:
    """`uid 1000 (alice)`, or `uid 1000` for a uid with no name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _node_user() -> str:
    return f"the node's user, {user_name(os.geteuid())}"


def _check_link(path: Path, st: os.stat_result) -> None:
    """A symbolic link is followed only when the node's user or root made it: in a directory
    others may write to (a sticky one) anyone can plant one."""
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeDirectory(
            f"{path} is a symbolic link owned by {user_name(st.st_uid)}, neither "
            f"{_node_user()} nor root: refused (it could point the store anywhere)"
        )


def check_data_dir(path: Path) -> None:
    """Refuse the data directory `path` when a user other than the node's or root owns it, or
    when its group or other users may write to it with no sticky bit: either could remove or
    replace the store's directories (their own, or links to anywhere) under the node. Its
    mode is left as it is (the operator's: a hostPath, systemd's CacheDirectory).

    Raises:
        UnsafeDirectory: refused, the message says why.
        OSError: it cannot be looked at.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        _check_link(path, st)
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"the data directory {path} is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeDirectory(
            f"the data directory {path} is owned by {user_name(st.st_uid)}, neither "
            f"{_node_user()} nor root: refused (its owner could replace what the store "
            "keeps there)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & OTHERS_WRITE and not mode & stat.S_ISVTX:
        raise UnsafeDirectory(
            f"the data directory {path} is mode {mode:04o}: its group or other users may "
            "write to it (no sticky bit) and could replace what the store keeps there: "
            f"refused (chmod go-w {path})"
        )


def _open_own_dir(path: Path) -> int:
    """An open descriptor of the store directory `path`: a directory the node's user owns,
    or a symbolic link (the node's user's or root's) to one (blobs on another disk, say).
    Opened with O_NOFOLLOW, so what is checked is what is tightened.

    Raises:
        UnsafeDirectory: not a directory, or not the node's user's.
    """
    st = os.lstat(path)
    target = path
    if stat.S_ISLNK(st.st_mode):
        _check_link(path, st)
        target = Path(os.path.realpath(path))
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        # ELOOP: a link where the target was (put there since it was resolved).
        if exc.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP):
            raise UnsafeDirectory(f"{_named(path, target)} is not a directory") from exc
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeDirectory(
                f"{_named(path, target)} is owned by {user_name(st.st_uid)}, not by "
                f"{_node_user()}: refused (the store's directories must be the node's user's "
                "alone: another user could put files in them that would be served)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _named(path: Path, target: Path) -> str:
    return str(path) if target == path else f"{path} (a link to {target})"


def close_dir(path: Path) -> int | None:
    """Make the store directory `path` (`make_dir`), or check one that is there (it must be
    the node's user's: `_open_own_dir`) and set it DIR_MODE when its group or other users
    may do anything in it (a setgid or sticky bit goes too). Returns the mode it had when it
    was tightened, else None.

    Raises:
        UnsafeDirectory: it is not the node's user's, or cannot be tightened.
        OSError: it cannot be made or looked at.
    """
    try:
        if make_dir(path):
            return None
    except FileExistsError:
        pass  # not a directory (nor a link to one): said below
    fd = _open_own_dir(path)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if not mode & OTHERS:
            return None
        try:
            os.fchmod(fd, DIR_MODE)
        except OSError as exc:
            raise UnsafeDirectory(
                f"{path} is mode {mode:04o}, open to other local users, and cannot be set "
                f"to {DIR_MODE:04o}: {exc.strerror or exc}"
            ) from exc
        return mode
    finally:
        os.close(fd)


def open_for_writing(path: Path, append: bool = False) -> BinaryIO:
    """Open `path` to write (truncated) or to append to, made FILE_MODE if it is missing."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return open(os.open(path, flags, FILE_MODE), "ab" if append else "wb")


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` (made FILE_MODE if it is missing, else truncated first)."""
    with open_for_writing(path) as f:
        f.write(data)


def fsync_dir(path: Path) -> None:
    """Make the names in directory `path` durable (a rename into it, say)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
