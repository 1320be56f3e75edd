#!/usr/bin/env python3
"""Live overhead: fio 4 KiB random reads (O_DIRECT, a file on the virtio-blk
disk) at QD1 and QD32, interleaved rounds, with nothing tracing, with
`vtrace stat --source live`, with `vtrace capture --source live`, and with a
bpftrace one-liner counting the same virtqueue's interrupts. Then the
per-hit cost of the interrupt program from BPF's own statistics
(kernel.bpf_stats_enabled: run_time_ns / run_cnt), vtrace's and bpftrace's,
in one pass each.

    sudo python bench/live.py [--rounds 5] [--seconds 5] [--out bench/results]

Needs root, fio and bpftrace (apt-get install fio bpftrace). IOPS here vary
about ±5% run to run: the per-hit cost is the precise figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from benchlib import RESULTS, ROOT, save

FILE = "/var/tmp/vtrace-bench-fio.bin"
PY = sys.executable


def disk_queue() -> str:
    """The /proc/interrupts name of the root disk's request queue, e.g. virtio1-req.0."""
    dev = os.path.basename(os.path.realpath("/sys/block/vda/device"))
    return f"{dev}-req.0"


def fio(qd: int, seconds: int) -> float:
    out = subprocess.run(["fio", "--name=r", f"--filename={FILE}", "--rw=randread", "--bs=4k", "--direct=1",
                          "--ioengine=libaio", f"--iodepth={qd}", f"--runtime={seconds}", "--time_based",
                          "--size=256M", "--output-format=json"], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["jobs"][0]["read"]["iops"])


def start(cfg: str, tmp: str):
    if cfg == "none":
        return None
    if cfg == "bpftrace":
        prog = f'tracepoint:irq:irq_handler_entry /str(args->name) == "{disk_queue()}"/ {{ @n = count(); }}'
        p = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for _ in range(20):  # warnings (RLIMIT_MEMLOCK here) may come before "Attaching"
            line = p.stdout.readline()
            seen.append(line.strip())
            if "Attaching" in line or not line:
                break
        if "Attaching" not in seen[-1]:
            raise RuntimeError(f"bpftrace did not start: {' | '.join(seen)}")
        return p
    args = ["stat", "-j", "--source", "live", "1"] if cfg == "stat" else \
        ["capture", "--source", "live", "-f", "-o", os.path.join(tmp, "bench.vtrace")]
    p = subprocess.Popen([PY, "-m", "vtrace.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    line = p.stderr.readline()  # "Tracing ..." / "Capturing ...": printed once the probes are attached
    if "Hit Ctrl-C" not in line:
        raise RuntimeError(f"vtrace did not start: {line}")
    return p


def stop(p) -> None:
    if p is None:
        return
    p.send_signal(signal.SIGTERM)  # SIGINT is ignored in background jobs; both stop vtrace cleanly
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def per_hit(cfg: str, tmp: str, seconds: int) -> dict:
    """Mean run time per hit of the interrupt program, BPF's own statistics."""
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        p = start(cfg, tmp)
        time.sleep(1)
        fio(32, seconds)
        progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        stop(p)
    finally:
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=True)
    if cfg == "bpftrace":  # attached through perf events, named after its probe
        hits = [x for x in progs if x.get("run_cnt") and x.get("name", "").startswith("irq_handler_ent")]
    else:  # bcc truncates names; the raw tracepoint link says which program is which
        ids = {lk["prog_id"] for lk in links if lk.get("tp_name") == "irq_handler_entry"}
        hits = [x for x in progs if x["id"] in ids and x.get("run_cnt")]
    cnt = sum(x["run_cnt"] for x in hits)
    ns = sum(x["run_time_ns"] for x in hits)
    return {"programs": [x.get("name") for x in hits], "run_cnt": cnt, "run_time_ns": ns,
            "ns_per_hit": round(ns / cnt, 1) if cnt else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/live.py: needs root (BPF); skipped", file=sys.stderr)
        return 0
    for tool in ("fio", "bpftrace", "bpftool"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            print(f"bench/live.py: {tool} is not installed (apt-get install {tool}); skipped", file=sys.stderr)
            return 0
    import tempfile
    tmp = tempfile.mkdtemp(prefix="vtrace-bench-")
    subprocess.run(["fio", "--name=prep", f"--filename={FILE}", "--rw=write", "--bs=1M", "--size=256M",
                    "--direct=1"], capture_output=True, check=True)
    cfgs = ["none", "stat", "capture", "bpftrace"]
    iops: dict[str, dict[int, list[float]]] = {c: {1: [], 32: []} for c in cfgs}
    fio(1, a.seconds)  # warm up the file and the page tables before the first measured run
    for r in range(a.rounds):
        order = cfgs[r % len(cfgs):] + cfgs[:r % len(cfgs)]  # interleaved: each config leads once
        for cfg in order:
            p = start(cfg, tmp)
            try:
                for qd in (1, 32):
                    iops[cfg][qd].append(fio(qd, a.seconds))
            finally:
                stop(p)
        print(f"round {r + 1}: " + "  ".join(f"{c} {iops[c][1][-1]:.0f}/{iops[c][32][-1]:.0f}" for c in cfgs),
              flush=True)
    res = {"rounds": a.rounds, "seconds": a.seconds, "disk_queue": disk_queue(), "iops": iops, "median": {},
           "per_hit": {}}
    print(f"\nfio randread 4 KiB O_DIRECT, {a.rounds} interleaved rounds of {a.seconds} s, median IOPS "
          f"(change vs none):")
    for qd in (1, 32):
        base = statistics.median(iops["none"][qd])
        for cfg in cfgs:
            m = statistics.median(iops[cfg][qd])
            res["median"][f"{cfg}_qd{qd}"] = m
            print(f"  QD{qd:<3} {cfg:<9} {m:9.0f}  {100 * (m - base) / base:+6.1f}%")
    for cfg in ("stat", "bpftrace"):
        res["per_hit"][cfg] = per_hit(cfg, tmp, a.seconds)
        h = res["per_hit"][cfg]
        print(f"per hit, {cfg}: {h['ns_per_hit']} ns mean over {h['run_cnt']:,} hits ({', '.join(h['programs'])})")
    save(a.out, "live.json", res)
    os.unlink(FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
