"""How records reach user space: a BPF ring buffer, or the perf-buffer fallback.

BPF_MAP_TYPE_RINGBUF (Linux 5.8, kernel/bpf/ringbuf.c) is one buffer shared by
all CPUs, read a batch at a time from its mapping (vtrace/live/ringbuf.py).
Older kernels have only per-CPU perf buffers (BPF_MAP_TYPE_PERF_EVENT_ARRAY,
bpf_perf_event_output), read through bcc (vtrace/live/perfbuf.py). vtrace
takes the ring buffer where the kernel creates one; VTRACE_EVENTS=perf (or
=ringbuf) forces the choice, e.g. to test the fallback on a new kernel.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import struct

KINDS = ("ringbuf", "perf")
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27


@functools.lru_cache(maxsize=None)
def ringbuf_available() -> tuple[bool, str]:
    """Does this kernel create a BPF ring buffer? (ok, why not). Tried once per process."""
    from vtrace.kernel import fentry
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries
    attr = ctypes.create_string_buffer(struct.pack("<IIII", BPF_MAP_TYPE_RINGBUF, 0, 0, mmap.PAGESIZE), 72)
    try:
        fd = fentry.bpf(BPF_MAP_CREATE, attr)
    except (OSError, fentry.FentryError) as e:
        return False, f"no BPF ring buffer ({e}; Linux 5.8+)"
    os.close(fd)
    return True, ""


def choose() -> tuple[str, str]:
    """(transport, why): VTRACE_EVENTS if set, else the ring buffer where it exists."""
    env = os.environ.get("VTRACE_EVENTS", "").strip()
    if env:
        if env not in KINDS:
            raise ValueError(f"VTRACE_EVENTS: unknown transport {env!r} (known: {', '.join(KINDS)})")
        return env, "VTRACE_EVENTS"
    ok, why = ringbuf_available()
    return ("ringbuf", "") if ok else ("perf", why)
