"""kernel.bpf_stats_enabled: while it is 1 the kernel counts each BPF
program's runs and the time they take (run_cnt, run_time_ns), at a small
cost on every run; so it is on only while asked for, then put back."""

from __future__ import annotations

import contextlib

KNOB = "/proc/sys/kernel/bpf_stats_enabled"


class BpfStatsError(Exception):
    """The knob cannot be turned on (one line)."""


@contextlib.contextmanager
def enabled(knob: str = KNOB):
    """BPF statistics on for the block; the knob's old value is written back
    however the block ends. Needs root."""
    try:
        with open(knob) as f:
            before = f.read().strip()
        with open(knob, "w") as f:
            f.write("1")
    except OSError as e:
        raise BpfStatsError(f"cannot enable BPF statistics ({knob}: {e.strerror})") from None
    try:
        yield
    finally:
        with open(knob, "w") as f:
            f.write(before)
