"""A kprobe miss provoked on purpose, read back the way vtrace reads a point's (in the lab guest).

    kprobe_missed.py N OUT.json

A kprobe that fires while another kprobe's handler runs on its CPU is not
run: the kernel counts it in that kprobe's nmissed, which it reports for a
kprobe attached through a BPF link from Linux 6.7 (vtrace/kernel/kprobe.py).
Here the outer kprobe (on getppid's syscall entry, this process only) updates
a hash map from its program: htab_map_update_elem runs inside the outer
kprobe's handler, so the inner kprobe, on htab_map_update_elem, misses
exactly once per getppid(). This process makes N of them; nothing else in the
guest updates a BPF hash map meanwhile. Writes the outer program's runs, the
inner's runs and the inner kprobe's misses as vtrace read them.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

from vtrace.kernel import headers, kprobe

TEXT = """
BPF_HASH(seen, u32, u64, 64);
BPF_ARRAY(runs, u64, 2);
int outer(void *ctx) {
    u32 key = 0;
    u64 one = 1;
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    u64 *n = runs.lookup(&key);
    if (n) __sync_fetch_and_add(n, 1);
    seen.update(&key, &one);
    return 0;
}
int inner(void *ctx) {
    u32 key = 1;
    u64 *n = runs.lookup(&key);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def main() -> int:
    n, out = int(sys.argv[1]), sys.argv[2]
    os.environ.update(headers.bcc_env())
    from bcc import BPF
    b = BPF(text=TEXT.encode(), cflags=[f"-DPID={os.getpid()}"])
    inner = kprobe.attach(b.load_func(b"inner", BPF.KPROBE).fd, "htab_map_update_elem", False)
    outer = kprobe.attach(b.load_func(b"outer", BPF.KPROBE).fd, b.get_syscall_fnname(b"getppid").decode(), False)
    try:
        before = inner.missed()
        for _ in range(n):
            os.getppid()
        res = {"outer_runs": int(b[b"runs"][ctypes.c_int(0)].value),
               "inner_runs": int(b[b"runs"][ctypes.c_int(1)].value),
               "missed_before": before, "missed": inner.missed(), "linked": inner.link_fd >= 0}
    finally:
        outer.close()
        inner.close()
        b.cleanup()
    with open(out, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
