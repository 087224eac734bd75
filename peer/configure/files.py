"""Changing a runtime's configuration files so that it can be put back: a diff before, a backup
of the original once, an atomic write, and an undo.

A change is planned as text (`Change`: the file as it is and as it will be) by the pure
writers of each runtime; only this module touches the disk. The first change pollen makes to
a file keeps what was there: `<file>.pollen-backup` (a copy, same mode) or, for a file pollen
creates, an empty `<file>.pollen-created`. Later runs keep that first backup, so `--undo` puts
back the operator's file however often `pollen configure` ran.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

BACKUP_SUFFIX = ".pollen-backup"
CREATED_SUFFIX = ".pollen-created"
NEW_FILE_MODE = 0o644
NEW_DIR_MODE = 0o755


class ConfigureError(Exception):
    """A file pollen cannot change safely (its message says why and what to do)."""


@dataclass(frozen=True)
class Change:
    path: Path
    before: str | None  # None: the file does not exist
    after: str | None  # None: the file goes

    @property
    def changes(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the change ('' when there is none)."""
        if not self.changes:
            return ""
        before = (self.before or "").splitlines(keepends=True)
        after = (self.after or "").splitlines(keepends=True)
        lines = difflib.unified_diff(
            before,
            after,
            fromfile="/dev/null" if self.before is None else str(self.path),
            tofile="/dev/null" if self.after is None else str(self.path),
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def read_text(path: Path) -> str | None:
    """The file's text, None when it does not exist.

    Raises:
        ConfigureError: it exists but cannot be read as UTF-8 text.
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigureError(f"cannot read {path}: {exc}") from exc


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def created_marker_of(path: Path) -> Path:
    return path.with_name(path.name + CREATED_SUFFIX)


def apply(change: Change) -> None:
    """Make the change, keeping the original first (once).

    Raises:
        ConfigureError: the file or its backup cannot be written.
    """
    if not change.changes:
        return
    path = change.path
    try:
        _keep_original(path)
        if change.after is None:
            path.unlink(missing_ok=True)
        else:
            _write_atomically(path, change.after)
    except OSError as exc:
        raise ConfigureError(f"cannot write {path}: {exc}") from exc


def undo_change(path: Path) -> Change | None:
    """What puts `path` back as it was before pollen first changed it; None when pollen
    has not changed it (no backup, no marker)."""
    backup, created = backup_of(path), created_marker_of(path)
    if backup.exists():
        original = read_text(backup)
        return Change(path, read_text(path), original)
    if created.exists():
        return Change(path, read_text(path), None)
    return None


def apply_undo(change: Change) -> None:
    """Put the file back (`undo_change`) and drop the backup or marker.

    Raises:
        ConfigureError: the file cannot be restored.
    """
    path = change.path
    backup, created = backup_of(path), created_marker_of(path)
    try:
        if backup.exists():
            # The copy keeps the original's mode and owner; a rename keeps them too.
            os.replace(backup, _real(path))
        elif created.exists():
            path.unlink(missing_ok=True)
            created.unlink()
            with contextlib.suppress(OSError):  # a directory made for it, if now empty
                path.parent.rmdir()
    except OSError as exc:
        raise ConfigureError(f"cannot restore {path}: {exc}") from exc


def _keep_original(path: Path) -> None:
    backup, created = backup_of(path), created_marker_of(path)
    if backup.exists() or created.exists():
        return  # the operator's original is kept already
    if path.exists():
        shutil.copy2(_real(path), backup)
    else:
        path.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
        created.touch(mode=NEW_FILE_MODE)


def _real(path: Path) -> Path:
    """The file a symlink points at: a rename over the link would replace the link."""
    return Path(os.path.realpath(path))


def _write_atomically(path: Path, text: str) -> None:
    """Write a new file beside it and rename it over: a reader (containerd at start, say)
    sees the old file or the new one, never half of one."""
    target = _real(path)
    target.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
