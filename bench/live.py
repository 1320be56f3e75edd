#!/usr/bin/env python3
"""Live overhead: fio 4 KiB random reads (O_DIRECT, a file on the virtio-blk
disk) at QD1 and QD32, interleaved rounds, with nothing tracing, with
`vtrace stat --source live` (counting in the kernel), `vtrace stat --stream`
(every event to user space), `vtrace capture --source live`, and a bpftrace
one-liner counting the same virtqueue's interrupts. Then the per-hit cost
of each program from BPF's own statistics (kernel.bpf_stats_enabled:
run_time_ns / run_cnt), one pass each, beside an empty raw tracepoint
program: the floor this machine charges any BPF program (the statistics'
own two clock reads included).

    sudo python bench/live.py [--rounds 5] [--seconds 5] [--out bench/results]
    sudo python bench/live.py --per-hit 5 [--baseline DIR]

--per-hit N measures only the per-hit costs, N interleaved rounds, and reports
each program's median; with --baseline, `vtrace stat` from another checkout
(e.g. `git worktree add /tmp/base HEAD~3`) runs beside this one's in the same
rounds ("stat@base").

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
TPS = ("irq_handler_entry", "block_rq_issue", "block_rq_complete")
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


def _hold(code: str, what: str):
    """A child that runs ``code`` (which loads programs), says so, and keeps them until SIGTERM."""
    code = ("import os, signal, sys\n" + code
            + "print('Hit Ctrl-C', file=sys.stderr, flush=True)\nsignal.sigwait({signal.SIGTERM})\n")
    p = subprocess.Popen([PY, "-c", code], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = p.stderr.readline()
    if "Hit Ctrl-C" not in line:
        raise RuntimeError(f"{what} program did not load: {line}")
    return p


def start(cfg: str, tmp: str, root: str = ROOT):
    if cfg == "none":
        return None
    # the floor: programs that do nothing, on the same points, held by a child until SIGTERM
    if cfg == "empty":  # raw tracepoints, loaded by bcc
        return _hold("from vtrace.kernel import headers\nos.environ.update(headers.bcc_env())\n"
                     "from bcc import BPF\nb = BPF(text=b'" + "".join(
                         f"RAW_TRACEPOINT_PROBE({tp}) {{ return 0; }} " for tp in TPS) + "')\n", cfg)
    if cfg == "empty-btf":  # tp_btf, loaded as vtrace loads its own (vtrace/kernel/fentry.py)
        return _hold("from vtrace.kernel import fentry\nkeep = []\n"
                     f"for tp in {TPS!r}:\n"
                     "    fd = fentry.load(fentry._RETURN_0, 'tp_btf', fentry.tp_target(tp), 0, 'empty_btf')\n"
                     "    keep += [fd, fentry.attach(fd)]\n", cfg)
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
    args = {"stat": ["stat", "-j", "--source", "live", "1"],
            "stat-stream": ["stat", "-j", "--stream", "--source", "live", "1"],
            "capture": ["capture", "--source", "live", "-f", "-o", os.path.join(tmp, "bench.vtrace")]}[cfg]
    # -m puts the working directory first on sys.path: the vtrace of `root` runs
    p = subprocess.Popen([PY, "-m", "vtrace.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, cwd=root)
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


def per_hit(cfg: str, tmp: str, seconds: int, baseline: str | None = None) -> dict:
    """Mean run time per hit of each tracepoint's programs, BPF's own statistics."""
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        p = start(cfg.removesuffix("@base"), tmp, baseline if cfg.endswith("@base") else ROOT)
        time.sleep(1)
        fio(32, seconds)
        progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                                          check=True).stdout)
        stop(p)
    finally:
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=True)
    out = {}
    for tp in TPS:
        if cfg == "bpftrace":  # attached through perf events, named after its probe
            hits = [x for x in progs if x.get("run_cnt") and x.get("name", "").startswith(tp[:15])]
        else:  # bcc truncates names; the raw tracepoint link says which program is which
            ids = {lk["prog_id"] for lk in links if lk.get("tp_name") == tp}
            hits = [x for x in progs if x["id"] in ids and x.get("run_cnt")]
        cnt = sum(x["run_cnt"] for x in hits)
        ns = sum(x["run_time_ns"] for x in hits)
        if cnt:
            out[tp] = {"run_cnt": cnt, "run_time_ns": ns, "ns_per_hit": round(ns / cnt, 1)}
    return out


def per_hit_rounds(rounds: int, seconds: int, baseline: str | None, tmp: str, out: str) -> None:
    """Per-hit costs only: interleaved rounds, each program's median."""
    cfgs = ["empty", "empty-btf", "stat", *(["stat@base"] if baseline else []), "bpftrace"]
    runs: dict[str, list[dict]] = {c: [] for c in cfgs}
    for r in range(rounds):
        for cfg in cfgs[r % len(cfgs):] + cfgs[:r % len(cfgs)]:
            runs[cfg].append(per_hit(cfg, tmp, seconds, baseline))
        print(f"round {r + 1}: " + "  ".join(
            f"{c} " + "/".join(str(runs[c][-1].get(tp, {}).get("ns_per_hit", "-")) for tp in TPS) for c in cfgs),
            flush=True)
    med = {c: {tp: statistics.median(x[tp]["ns_per_hit"] for x in runs[c] if tp in x)
               for tp in TPS if any(tp in x for x in runs[c])} for c in cfgs}
    print(f"\nper hit, median of {rounds} interleaved rounds of fio QD32 {seconds} s, mean ns "
          "(kernel.bpf_stats_enabled):")
    print(f"  {'':<12}" + "".join(f"{tp:>20}" for tp in TPS))
    for c in cfgs:
        print(f"  {c:<12}" + "".join(f"{med[c].get(tp, '-'):>20}" for tp in TPS))
    save(out, "live-per-hit.json", {"rounds": rounds, "seconds": seconds, "baseline": baseline, "runs": runs,
                                    "median": med})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--per-hit", type=int, metavar="N", help="only the per-hit costs, N interleaved rounds")
    ap.add_argument("--baseline", metavar="DIR", help="with --per-hit: also `vtrace stat` from this checkout")
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
    if a.per_hit:
        fio(32, a.seconds)  # warm up
        per_hit_rounds(a.per_hit, a.seconds, a.baseline and os.path.abspath(a.baseline), tmp, a.out)
        os.unlink(FILE)
        return 0
    cfgs = ["none", "stat", "stat-stream", "capture", "bpftrace"]
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
    print("\nper hit, mean ns (hits) at QD32, from kernel.bpf_stats_enabled:")
    print(f"  {'':<12}" + "".join(f"{tp:>28}" for tp in TPS))
    for cfg in ("empty", "empty-btf", "stat", "stat-stream", "capture", "bpftrace"):
        res["per_hit"][cfg] = h = per_hit(cfg, tmp, a.seconds)
        print(f"  {cfg:<12}" + "".join(f"{h[tp]['ns_per_hit']:>10} ({h[tp]['run_cnt']:>13,})" if tp in h
                                      else f"{'-':>28}" for tp in TPS), flush=True)
    save(a.out, "live.json", res)
    os.unlink(FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
