#!/usr/bin/env python3
"""What each thing a probe does costs, on this kernel: the helpers and map
operations vtrace's programs are made of, each run N times in a loop inside
one BPF program and timed there with bpf_ktime_get_ns(), net of an empty
loop. The program runs once per write to /proc/self/comm (the task_rename
raw tracepoint), filtered to this process; each operation's figure is the
median over the rounds.

Warm caches: every iteration hits the same map slots and lines, so these are
the floors. A probe that runs on cold caches (an interrupt on an idle vCPU)
pays a cache miss per line on top; bench/live.py --per-hit measures the
programs as they run.

    sudo python bench/bpf_ops.py [--loops 300] [--rounds 30]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchlib import RESULTS, save  # noqa: E402

# name -> loop body; `i` is the iteration, `p` a kernel address (current task),
# `acc` keeps the compiler from dropping a result.
OPS = {
    "empty loop": "",
    "bpf_ktime_get_ns": "acc += bpf_ktime_get_ns();",
    "bpf_get_current_pid_tgid": "acc += bpf_get_current_pid_tgid();",
    "probe_read_kernel 8 B": "u64 v = 0; bpf_probe_read_kernel(&v, 8, (void *)(p + (i & 7) * 8)); acc += v;",
    "probe_read_kernel 64 B": "u64 v[8] = {}; bpf_probe_read_kernel(v, 64, (void *)(p + (i & 7) * 8)); acc += v[0];",
    "hash lookup (8 B key)": "u64 k = i & 3; u64 *v = h8.lookup(&k); if (v) acc += *v;",
    "per-CPU hash lookup_or_try_init, += 1 (16 B key)":
        "struct k16 k = {.a = i & 3}; u64 z = 0; u64 *v = ph16.lookup_or_try_init(&k, &z); if (v) *v += 1;",
    "array lookup": "int k = i & 3; u64 *v = arr.lookup(&k); if (v) acc += *v;",
    "hash lookup + store in place (16 B key)":
        "struct k16 k = {.a = i & 63}; u64 *v = h16.lookup(&k); if (v) *v = i; else { u64 t = 1; h16.insert(&k, &t); }",
    "LRU hash lookup + store in place (16 B key)":
        "struct k16 k = {.a = i & 63}; u64 *v = lru16.lookup(&k); if (v) *v = i; "
        "else { u64 t = 1; lru16.insert(&k, &t); }",
    "hash update (16 B key, existing)": "struct k16 k = {.a = i & 63}; u64 t = 1; h16.update(&k, &t);",
    "hash insert + delete (16 B key)": "struct k16 k = {.a = 1000 + i}; u64 t = 1; h16.insert(&k, &t); h16.delete(&k);",
}


def program(loops: int) -> str:
    src = ["struct k16 { u64 a; u64 b; };",
           "BPF_HASH(h8, u64, u64, 4096);",
           "BPF_PERCPU_HASH(ph16, struct k16, u64, 4096);",
           "BPF_HASH(h16, struct k16, u64, 65536);",
           'BPF_TABLE("lru_hash", struct k16, u64, lru16, 65536);',
           "BPF_ARRAY(arr, u64, 4);",
           f"BPF_ARRAY(res, u64, {len(OPS)});",
           "RAW_TRACEPOINT_PROBE(task_rename)",
           "{",
           "\tif ((bpf_get_current_pid_tgid() >> 32) != BENCH_PID)",
           "\t\treturn 0;",
           "\tu64 p = (u64)bpf_get_current_task(), t0;",
           "\tint k;"]
    for n, body in enumerate(OPS.values()):
        src += ["\t{",
                "\t\tu64 acc = 0;",
                "\t\tt0 = bpf_ktime_get_ns();",
                "#pragma clang loop unroll(disable)",
                f"\t\tfor (u32 i = 0; i < {loops}; i++) {{ {body} }}",
                f"\t\tk = {n};",
                "\t\tu64 d = bpf_ktime_get_ns() - t0 + (acc & 0);",
                "\t\tres.update(&k, &d);",
                "\t}"]
    src += ["\treturn 0;", "}"]
    return "\n".join(src) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--ebpf", action="store_true", help="print the program and exit")
    a = ap.parse_args()
    if a.ebpf:
        print(program(a.loops), end="")
        return 0
    if os.geteuid() != 0:
        print("bench/bpf_ops.py: needs root (BPF); skipped", file=sys.stderr)
        return 0
    from vtrace.kernel import headers
    os.environ.update(headers.bcc_env())
    from bcc import BPF
    b = BPF(text=program(a.loops).encode(), cflags=[f"-DBENCH_PID={os.getpid()}"])
    for k in range(4):
        b["h8"][ctypes.c_ulonglong(k)] = ctypes.c_ulonglong(k)
    per: dict[str, list[float]] = {name: [] for name in OPS}
    comm = open("/proc/self/comm").read().strip()
    try:
        for r in range(a.rounds):
            with open("/proc/self/comm", "w") as f:
                f.write(f"bpf-ops-{r}")
            for n, name in enumerate(OPS):
                per[name].append(b["res"][ctypes.c_int(n)].value / a.loops)
    finally:
        with open("/proc/self/comm", "w") as f:
            f.write(comm)
        b.cleanup()
    base = statistics.median(per["empty loop"])
    res = {"loops": a.loops, "rounds": a.rounds, "ns_per_op": {}}
    print(f"ns per operation, median of {a.rounds} rounds of {a.loops} (net of the empty loop, "
          f"{base:.1f} ns/iteration):")
    for name in OPS:
        if name == "empty loop":
            continue
        ns = round(statistics.median(per[name]) - base, 1)
        res["ns_per_op"][name] = ns
        print(f"  {name:<50} {ns:>7.1f}")
    save(a.out, "bpf_ops.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
