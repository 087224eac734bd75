"""Changing a runtime's configuration files so that it can be put back: a diff before, a backup
of the original once, an atomic write, and an undo.

A change is planned as text (`Change`: the file as it is and as it will be) by the pure
writers of each runtime; only this module touches the disk. The first change pollen makes to
a file keeps what was there: `<file>.pollen-backup` (a copy, same mode) or, for a file pollen
creates, an empty `<file>.pollen-created`. Later runs keep that first backup, so `--undo` puts
back the operator's file however often `pollen configure` ran. `<file>.pollen-written` holds
the sha256 of what pollen wrote last: an undo refuses to throw away a file the operator has
changed since (unless forced).

Paths are resolved as the host sees them (`resolve_in`): a symlink's absolute target is under
the root the host's / is mounted at, and nothing leads outside that root.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

BACKUP_SUFFIX = ".pollen-backup"
CREATED_SUFFIX = ".pollen-created"
WRITTEN_SUFFIX = ".pollen-written"
MAX_SYMLINKS = 40
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


def resolve_in(path: Path, root: Path) -> Path:
    """`path` (under `root`) with every symlink followed as the host sees it: an absolute
    target is under `root`, as if `root` were /.

    Raises:
        ConfigureError: the path leads outside `root`, or through too many symlinks.
    """
    root = Path(os.path.normpath(os.path.abspath(root)))
    parts = list(Path(os.path.abspath(path)).relative_to(root).parts)
    resolved, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved == root and root != Path("/"):
                raise ConfigureError(f"{path} leads outside {root} (the host's /)")
            resolved = resolved.parent
            continue
        candidate = resolved / part
        if not candidate.is_symlink():
            resolved = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise ConfigureError(f"{path}: too many symlinks")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = root
        parts = [p for p in Path(target).parts if p != "/"] + parts
    return resolved


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def written_of(path: Path) -> Path:
    return path.with_name(path.name + WRITTEN_SUFFIX)


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
            _write_atomically(written_of(path), _sha256(change.after) + "\n")
    except OSError as exc:
        raise ConfigureError(f"cannot write {path}: {exc}") from exc


def undo_change(path: Path, *, force: bool = False) -> Change | None:
    """What puts `path` back as it was before pollen first changed it; None when pollen
    has not changed it (no backup, no marker).

    Raises:
        ConfigureError: the file changed since pollen wrote it (and not `force`).
    """
    backup, created = backup_of(path), created_marker_of(path)
    if not backup.exists() and not created.exists():
        return None
    current = read_text(path)
    recorded = read_text(written_of(path))
    if (
        not force
        and recorded is not None
        and (current is None or _sha256(current) != recorded.strip())
    ):
        raise ConfigureError(
            f"{path} changed since pollen configure wrote it: undo would lose those changes. "
            "Put back what you need by hand (the original is "
            f"{backup if backup.exists() else 'no file at all'}), or pass --force"
        )
    if backup.exists():
        return Change(path, current, read_text(backup))
    return Change(path, current, None)


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
            os.replace(backup, path)
        elif created.exists():
            path.unlink(missing_ok=True)
            created.unlink()
        written_of(path).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigureError(f"cannot restore {path}: {exc}") from exc


def _keep_original(path: Path) -> None:
    backup, created = backup_of(path), created_marker_of(path)
    if backup.exists() or created.exists():
        return  # the operator's original is kept already
    if path.exists():
        # Copied beside it and renamed: a copy cut short (a full disk) is never taken for
        # the original by a later undo.
        partial = backup.with_name(backup.name + ".tmp")
        shutil.copy2(path, partial)
        os.replace(partial, backup)
    else:
        path.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
        created.touch(mode=NEW_FILE_MODE)


def _write_atomically(path: Path, text: str) -> None:
    """Write a new file beside it and rename it over: a reader (containerd at start, say)
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
