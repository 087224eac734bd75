"""A real small file system for tests of a full disk: a tmpfs mounted for the test (mounting
needs root, which the test machines and CI have) and always unmounted after."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax, e.g. `2m`) at a new directory `where`."""
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (tests run as root): {result.stderr.decode()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
