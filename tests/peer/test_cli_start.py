"""The node's command line starts without the benchmark harness (loaded by `pollen bench`)."""

from __future__ import annotations

import subprocess
import sys

from bench.components import REPO


def test_the_cli_does_not_import_the_benchmarks_until_pollen_bench_runs() -> None:
    probe = (
        "import sys, peer.cli; "
        "print(sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    bench = subprocess.run(
        [sys.executable, "-m", "peer.cli", "bench", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert bench.returncode == 0 and "pull" in bench.stdout and "swarm" in bench.stdout
