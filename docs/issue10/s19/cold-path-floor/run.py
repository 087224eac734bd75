#!/usr/bin/env python3
"""Driver: one sender -> mid -> reader pipeline per run. mid pinned to CPU1, sender/reader to CPU0.
usage: run.py NAME REPEATS SND_MODE SND_MSS -- <mid args...>   [env VERIFY=1 makes reader re-hash]
Prints mid's JSON per run and appends to /tmp/zc/results.jsonl with the name."""
import json, os, subprocess, sys, time

ZC = "/tmp/zc/zc"
SRC = "/tmp/zc/src.bin"
EXP = open("/tmp/zc/src.sha256").read().split()[0]


def one(name, smode, smss, midargs, verify, port):
    p1, p2 = port, port + 1
    rcpu, mcpu, scpu = os.environ.get("CPUS", "0,1,0").split(",")
    rargs = ["taskset", "-c", rcpu, ZC, "rdr", "-P", str(p2)] + (["-v", EXP] if verify else []) + os.environ.get("RDR_ARGS", "").split()
    margs = ["taskset", "-c", mcpu, ZC, "mid", "-p", str(p1), "-P", str(p2), "-e", EXP] + midargs
    sargs = ["taskset", "-c", scpu, ZC, "snd", "-p", str(p1), "-m", smode, "-f", SRC] + (["-M", str(smss)] if smss else [])
    procs = []
    try:
        rdr = subprocess.Popen(rargs, stderr=subprocess.PIPE, text=True); procs.append(rdr)
        mid = subprocess.Popen(margs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True); procs.append(mid)
        time.sleep(0.1)
        serve_only = midargs[midargs.index("-r") + 1] == "none"
        if not serve_only:
            snd = subprocess.Popen(sargs, stderr=subprocess.PIPE, text=True); procs.append(snd)
        mo, me = mid.communicate(timeout=300)
        so = "(no sender)" if serve_only else snd.communicate(timeout=60)[1]
        if "-S" in midargs and midargs[midargs.index("-S") + 1] != "none":
            ro = rdr.communicate(timeout=60)[1]
        else:
            rdr.kill(); ro = rdr.communicate()[1]; ro = "(reader unused)"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill(); p.wait()
    res = {"cpus": os.environ.get("CPUS", "0,1,0"), "rdr_args": os.environ.get("RDR_ARGS", ""), "name": name, "snd_mode": smode, "snd_mss": smss, "mid_rc": mid.returncode}
    try:
        res.update(json.loads(mo.strip().splitlines()[-1]))
    except Exception:
        res["mid_out"] = mo
    res["mid_err"] = me.strip()
    res["snd_err"] = so.strip()
    res["rdr_err"] = ro.strip()
    return res


def main():
    name, reps, smode, smss = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    midargs = sys.argv[sys.argv.index("--") + 1:]
    verify = os.environ.get("VERIFY") == "1"
    port = 20000 + (os.getpid() % 5000) * 2
    for i in range(reps):
        r = one(name, smode, smss, midargs, verify, port + 10 * i)
        print(json.dumps(r), flush=True)
        with open("/tmp/zc/results.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
