#!/usr/bin/env python3
"""Driver: one sender -> mid -> reader pipeline per run (mid on CPU 1, the others on CPU 0).

usage: run.py NAME REPEATS SND_MODE SND_MSS -- <mid args...>
(env VERIFY=1 makes the reader hash again; CPUS=rdr,mid,snd taskset lists; RDR_ARGS)
Prints mid's JSON per run and appends it to /tmp/zc/results.jsonl with the name.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ZC = "/tmp/zc/zc"
SRC = "/tmp/zc/src.bin"
EXPECTED = Path("/tmp/zc/src.sha256").read_text().split()[0]


def one(
    name: str, smode: str, smss: int, midargs: list[str], verify: bool, port: int
) -> dict[str, object]:
    p1, p2 = port, port + 1
    cpus = os.environ.get("CPUS", "0,1,0")
    rcpu, mcpu, scpu = cpus.split(",")
    rargs = ["taskset", "-c", rcpu, ZC, "rdr", "-P", str(p2)]
    rargs += ["-v", EXPECTED] if verify else []
    rargs += os.environ.get("RDR_ARGS", "").split()
    margs = ["taskset", "-c", mcpu, ZC, "mid", "-p", str(p1), "-P", str(p2), "-e", EXPECTED]
    margs += midargs
    sargs = ["taskset", "-c", scpu, ZC, "snd", "-p", str(p1), "-m", smode, "-f", SRC]
    sargs += ["-M", str(smss)] if smss else []
    procs: list[subprocess.Popen[str]] = []
    try:
        rdr = subprocess.Popen(rargs, stderr=subprocess.PIPE, text=True)
        procs.append(rdr)
        mid = subprocess.Popen(margs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(mid)
        time.sleep(0.1)
        serve_only = midargs[midargs.index("-r") + 1] == "none"
        if not serve_only:
            snd = subprocess.Popen(sargs, stderr=subprocess.PIPE, text=True)
            procs.append(snd)
        mid_out, mid_err = mid.communicate(timeout=300)
        snd_err = "(no sender)" if serve_only else snd.communicate(timeout=60)[1]
        if "-S" in midargs and midargs[midargs.index("-S") + 1] != "none":
            rdr_err = rdr.communicate(timeout=60)[1]
        else:
            rdr.kill()
            rdr.communicate()
            rdr_err = "(reader unused)"
    finally:
        for proc in procs:  # each by its own handle (PID), never by name
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    result: dict[str, object] = {
        "cpus": cpus,
        "rdr_args": os.environ.get("RDR_ARGS", ""),
        "name": name,
        "snd_mode": smode,
        "snd_mss": smss,
        "mid_rc": mid.returncode,
    }
    try:
        result.update(json.loads(mid_out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        result["mid_out"] = mid_out
    result["mid_err"] = mid_err.strip()
    result["snd_err"] = snd_err.strip()
    result["rdr_err"] = rdr_err.strip()
    return result


def main() -> None:
    name, reps, smode, smss = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    midargs = sys.argv[sys.argv.index("--") + 1 :]
    verify = os.environ.get("VERIFY") == "1"
    port = 20000 + (os.getpid() % 5000) * 2
    for i in range(reps):
        result = one(name, smode, smss, midargs, verify, port + 10 * i)
        print(json.dumps(result), flush=True)
        with open("/tmp/zc/results.jsonl", "a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
