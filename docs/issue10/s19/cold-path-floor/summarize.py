# /tmp/zc/summarize.py [results.jsonl] -- median/min per combination (CPU-s per GiB of the middle process)
import json, sys, statistics as st
from collections import OrderedDict
f = sys.argv[1] if len(sys.argv) > 1 else "/tmp/zc/results.jsonl"
g = OrderedDict()
for l in open(f):
    d = json.loads(l); g.setdefault(d["name"], []).append(d)
cols = ["cpu_total", "cpu_rx", "cpu_hash", "cpu_store", "cpu_serve"]
print(f"{'combination':20s} {'n':>2s} " + " ".join(f"{c[4:]+' med/min':>15s}" for c in cols) + "  mapped%  sha_ok  rdr_ok")
for k, rs in g.items():
    good = [r for r in rs if r.get("mid_rc") == 0 and "cpu_total" in r]
    if not good:
        print(k, "FAILED", rs[0].get("mid_err")); continue
    cells = []
    for c in cols:
        v = [r[c] for r in good]
        cells.append(f"{st.median(v):7.3f}/{min(v):6.3f}" if max(v) > 0.0005 else f"{'-':>14s}")
    mp = st.median([100.0 * r["b_mapped"] / r["bytes"] for r in good])
    ok = sum(1 for r in good if r["sha_ok"] == 1)
    rok = sum(1 for r in good if "bytes=1073741824" in r.get("rdr_err", ""))
    print(f"{k:20s} {len(good):2d} " + " ".join(f"{c:>15s}" for c in cells) + f"  {mp:6.1f}  {ok}/{len(good)}  {rok if any(r['serve']!='none' for r in good) else '-'}")
