"""Probe runs the kernel skipped: which it counts, per attach strategy and
kernel, and reading the counts.

A BPF program is not run, and nothing it would have recorded exists, when
the kernel refuses to nest it:
- fentry/fexit, tp_btf and raw tracepoint programs are skipped when the same
  program is already running on that CPU (kernel/bpf/trampoline.c
  __bpf_prog_enter_recur, kernel/trace/bpf_trace.c __bpf_trace_run), and
  counted in the program's ``recursion_misses`` (fdinfo, Linux 5.12+);
- kprobe and perf tracepoint programs are skipped when any such program, or
  a bpf() map syscall, is active on that CPU (trace_call_bpf's
  bpf_prog_active), counted in ``recursion_misses`` only from Linux 6.7
  ("bpf: Count missed stats in trace_call_bpf");
- a kprobe that fires while another kprobe's handler runs on that CPU is not
  run at all (kprobe_ftrace_handler, kprobe_int3_handler) and counted in the
  kprobe's own nmissed, which the kernel shows for a kprobe attached through
  a BPF link from Linux 6.7 (bpf_link_info.perf_event.kprobe.missed).
"""

from __future__ import annotations

import os
import re

COUNTED_FROM = {
    # strategy kind -> (first kernel that counts its skipped runs, what goes uncounted before)
    "fentry": ((5, 12), "runs skipped while the same program ran on the CPU"),
    "tp_btf": ((5, 12), "runs skipped while the same program ran on the CPU"),
    "raw_tracepoint": ((5, 12), "runs skipped while the same program ran on the CPU"),
    "tracepoint": ((6, 7), "runs skipped while another BPF program ran on the CPU"),
    "kprobe": ((6, 7), "runs skipped while another kprobe or BPF program ran on the CPU"),
}


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string (``uname -r``), e.g. 6.1.0-57-amd64 -> (6, 1)."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def uncounted(kind: str, version: tuple[int, int], kprobe_link: bool = False) -> str:
    """What this kernel skips uncounted for a point attached as ``kind`` (empty:
    every skipped run is counted), as a caveat naming the kernel that counts it.
    ``kprobe_link``: the kprobe is attached through a BPF link, whose info
    carries the kprobe's own misses (re-entries) from 6.7."""
    since, what = COUNTED_FROM.get(kind, ((0, 0), ""))
    if version >= since:
        if kind == "kprobe" and not kprobe_link:
            return "kprobe re-entries (a hit while another kprobe's handler runs on the CPU) are not counted: " \
                   "this kprobe has no BPF link to report them"
        return ""
    return f"{what} are not counted before Linux {since[0]}.{since[1]}"


def fdinfo(fd: int) -> dict[str, int]:
    """The numeric fields of /proc/self/fdinfo/<fd> (a BPF program's run_cnt,
    run_time_ns, recursion_misses ...); empty when it cannot be read."""
    out = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for ln in f:
                k, _, v = ln.partition(":")
                v = v.strip()
                if v.isdigit():
                    out[k] = int(v)
    except OSError:
        pass
    return out


def recursion_misses(prog_fds) -> int:
    """Runs of these programs the kernel skipped and counted (fdinfo recursion_misses)."""
    return sum(fdinfo(fd).get("recursion_misses", 0) for fd in prog_fds)
