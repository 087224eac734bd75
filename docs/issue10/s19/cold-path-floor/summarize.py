"""Median / least per combination: CPU-s per GiB of the middle process.

usage: summarize.py [results.jsonl]
"""

import json
import statistics
import sys
from pathlib import Path

COLUMNS = ["cpu_total", "cpu_rx", "cpu_hash", "cpu_store", "cpu_serve"]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/zc/results.jsonl")
    runs: dict[str, list[dict[str, object]]] = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        runs.setdefault(run["name"], []).append(run)
    heads = " ".join(f"{c[4:] + ' med/min':>15s}" for c in COLUMNS)
    print(f"{'combination':20s} {'n':>2s} {heads}  mapped%  sha_ok  rdr_ok")
    for name, results in runs.items():
        good = [r for r in results if r.get("mid_rc") == 0 and "cpu_total" in r]
        if not good:
            print(name, "FAILED", results[0].get("mid_err"))
            continue
        cells = []
        for column in COLUMNS:
            values = [float(r[column]) for r in good]  # type: ignore[arg-type]
            if max(values) > 0.0005:
                cells.append(f"{statistics.median(values):7.3f}/{min(values):6.3f}")
            else:
                cells.append(f"{'-':>14s}")
        mapped = statistics.median(
            [100.0 * float(r["b_mapped"]) / float(r["bytes"]) for r in good]  # type: ignore[arg-type]
        )
        hashed_ok = sum(1 for r in good if r["sha_ok"] == 1)
        read_ok = sum(1 for r in good if "bytes=1073741824" in str(r.get("rdr_err", "")))
        served = any(r["serve"] != "none" for r in good)
        row = " ".join(f"{c:>15s}" for c in cells)
        tail = f"{mapped:6.1f}  {hashed_ok}/{len(good)}  {read_ok if served else '-'}"
        print(f"{name:20s} {len(good):2d} {row}  {tail}")


if __name__ == "__main__":
    main()
