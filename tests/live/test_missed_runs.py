"""Runs the kernel skips are counted, per point (vtrace/kernel/misses.py).

The kernel refuses to nest a program in itself on one CPU, and counts each
run it skips that way in the program's recursion_misses (fentry, tp_btf, raw
tracepoints; trace_call_bpf's skips too from Linux 6.7). vtrace adds those to
`lost` per point. Here a miss is provoked on purpose, so its count is known:
a raw tracepoint program on bpf_trace_printk that calls bpf_trace_printk
itself re-enters its own tracepoint once per run, and that nested run is
skipped.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from vtrace.kernel import misses
from vtrace.live.source import LiveSource

pytestmark = pytest.mark.live
N = 250
NR_GETPPID = 110  # x86_64


def test_a_program_reentering_itself_is_counted_once_per_skipped_run():
    from vtrace.kernel import headers
    os.environ.update(headers.bcc_env())
    from bcc import BPF
    # outer: each getppid() of this process prints once; inner: runs on that
    # print and prints again, re-entering bpf_trace_printk's tracepoint, whose
    # nested run of inner the kernel skips and counts
    text = f"""
BPF_ARRAY(outer_runs, u64, 1);
BPF_ARRAY(inner_runs, u64, 1);
RAW_TRACEPOINT_PROBE(sys_enter) {{
    int zero = 0;
    if ((bpf_get_current_pid_tgid() >> 32) != {os.getpid()} || ctx->args[1] != {NR_GETPPID}) return 0;
    u64 *n = outer_runs.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    bpf_trace_printk("vtrace test: outer\\n");
    return 0;
}}
RAW_TRACEPOINT_PROBE(bpf_trace_printk) {{
    int zero = 0;
    u64 *n = inner_runs.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    bpf_trace_printk("vtrace test: inner\\n");
    return 0;
}}
"""
    b = BPF(text=text.encode())
    try:
        inner = b.funcs[b"raw_tracepoint__bpf_trace_printk"].fd
        assert misses.fdinfo(inner).get("recursion_misses") == 0, misses.fdinfo(inner)
        for _ in range(N):
            os.getppid()
        outer = int(b[b"outer_runs"][ctypes.c_int(0)].value)
        ran = int(b[b"inner_runs"][ctypes.c_int(0)].value)
        assert outer == N and ran == N, (outer, ran)
        assert misses.recursion_misses([inner]) == N
    finally:
        b.cleanup()


def test_every_point_here_counts_its_skipped_runs():
    """On this kernel (6.18) every strategy that attaches here counts what it
    skips: each attached point reports its misses and no uncounted caveat."""
    src = LiveSource(programs=("virtio", "block", "kvm"))
    try:
        src.start()
        points = [p for p in src.probes() if p.attached]
    finally:
        src.close()
    assert {p.point for p in points} >= {"vring_interrupt", "block_rq_issue", "block_rq_complete", "pio"}
    assert all(p.uncounted == "" and p.missed >= 0 for p in points), [p for p in points if p.uncounted]
