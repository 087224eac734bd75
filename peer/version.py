"""`pollen --version`: the release, and the commit it was built from.

The one-file binary carries the commit in a module `make dist` writes (pollen_build); a source
checkout asks git; anything else says "unknown".
"""

from __future__ import annotations

import subprocess
from pathlib import Path

VERSION = "0.1.0"


def commit() -> str:
    try:
        import pollen_build  # type: ignore[import-not-found]  # only in the one-file binary
    except ImportError:
        return _git_commit() or "unknown"
    built: str = pollen_build.COMMIT
    return built


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parents[1]
    if not (source / ".git").exists():
        return None
    try:
        head = _git(source, "rev-parse", "--short=12", "HEAD")
        dirty = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _git(source: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return done.stdout.strip()
