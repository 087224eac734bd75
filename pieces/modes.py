"""File modes of the store: what it keeps on disk is the node's user's alone.

Private layers and manifests (fetched with credentials, served only to the clients a registry
accepts) lie in the store as plain files: a local user of the host who could read them would
go around the node's access check. So, whatever the process umask, every directory the store
makes is DIR_MODE and every file it writes FILE_MODE; the store's own directories, found
looser (made by an earlier version), are tightened (`close_dir`). The data directory itself,
when it exists, is the operator's: left as it is (what it holds is closed).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
OTHERS = 0o077  # what the group and other users may do


def make_dir(path: Path) -> bool:
    """Make the directory `path`, and its missing parents, each DIR_MODE (the umask can only
    take more away). True when `path` was made; False when it was there (left as it is).

    Raises:
        FileExistsError: `path` is there and not a directory.
    """
    try:
        os.mkdir(path, DIR_MODE)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dir(path.parent)
        return make_dir(path)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def close_dir(path: Path) -> int | None:
    """Make the directory `path` (`make_dir`), or take from one that is there whatever its
    group and other users may do. Returns the mode it had when it was tightened, else None.

    Raises:
        OSError: it cannot be made or tightened (another user's directory, say).
    """
    if make_dir(path):
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & OTHERS:
        return None
    os.chmod(path, mode & ~OTHERS)
    return mode


def open_for_writing(path: Path, append: bool = False) -> BinaryIO:
    """Open `path` to write (truncated) or to append to, made FILE_MODE if it is missing."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return open(os.open(path, flags, FILE_MODE), "ab" if append else "wb")


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` (made FILE_MODE if it is missing, else truncated first)."""
    with open_for_writing(path) as f:
        f.write(data)
