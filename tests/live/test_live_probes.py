"""Live probes on this machine: real BPF, real interrupts, a real (tiny) KVM guest.

What attaches here: tracepoints and raw
tracepoints; no kprobes, fentry refused; BTF-typed raw tracepoints (tp_btf)
load (vtrace loads them itself, vtrace/kernel/fentry.py). So the guest-virtio
points run on irq_handler_entry and the block tracepoints as tp_btf, or as
raw tracepoints where VTRACE_STRATEGIES leaves tp_btf out (both are held to
the kernel's counters here), and the kvm points on kvm tracepoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.live import kvmguest
from vtrace.aggregate import Aggregator
from vtrace.capture import CaptureWriter
from vtrace.events import RECORD_DTYPE, Kind, Layer
from vtrace.kernel import btf
from vtrace.pipeline import Pipeline
from vtrace.live.counts import VQ_SLOTS, vq_slot
from vtrace.live.source import LiveSource
from vtrace.sources.replay import ReplaySource

pytestmark = pytest.mark.live
IO_FILE = "/var/tmp/vtrace-live-io.bin"


def _proc_interrupts() -> dict[str, int]:
    out = {}
    with open("/proc/interrupts") as f:
        ncpu = len(f.readline().split())
        for ln in f:
            parts = ln.split()
            if not parts or not parts[0].endswith(":"):
                continue
            counts = [int(x) for x in parts[1:1 + ncpu] if x.isdigit()]
            out[parts[-1]] = sum(counts)
    return out


def _direct_io(n: int) -> None:
    """n 4 KiB O_DIRECT writes then reads on a root-filesystem file (on the virtio-blk disk)."""
    subprocess.run(["dd", "if=/dev/zero", f"of={IO_FILE}", "bs=4k", f"count={n}", "oflag=direct"],
                   check=True, capture_output=True)
    subprocess.run(["dd", f"if={IO_FILE}", "of=/dev/null", "bs=4k", f"count={n}", "iflag=direct"],
                   check=True, capture_output=True)


@contextlib.contextmanager
def _tracing(src: LiveSource, agg: Aggregator | None = None, settle: float = 0.3):
    """Drain ``src`` in a thread (feeding ``agg`` too) while the body runs the workload;
    the yielded dict then holds every event (``ev``) and object (``objs``)."""
    stop = threading.Event()
    out: dict = {}

    def drain():
        evs, objs = [], {}
        for b in src.batches():
            if agg is not None:
                agg.feed(b)
            evs.append(b.events)
            objs.update({o.obj: o for o in b.objects})
            # a batch read before the stop (built while the machine was busy)
            # may miss the workload's last events: end on one read after it
            if stop.is_set() and b.t_end >= out["stop_ns"]:
                break
        out.update(ev=np.concatenate(evs) if evs else np.zeros(0, RECORD_DTYPE), objs=objs)
    t = threading.Thread(target=drain)
    t.start()
    try:
        time.sleep(settle)  # the probes see the whole workload
        yield out
        time.sleep(settle)
    finally:
        out["stop_ns"] = time.monotonic_ns()
        stop.set()
        t.join(30)


def test_btf_offsets_match_bpftool():
    raw = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    block = re.search(r"STRUCT 'virtqueue' size=\d+ vlen=\d+\n((?:\t.*\n)+)", raw).group(1)
    want = {m.group(1): int(m.group(2)) // 8 for m in re.finditer(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", block)}
    got = {m.name: m.offset for m in btf.struct_layout("virtqueue").values()}
    assert got == want


def _require_attached(src, *points: str) -> None:
    """These points attached; any other (the guest ring's function points,
    which this machine refuses: no fentry, no kprobes) says why it did not."""
    st = {s.point: s for s in src.probes()}
    assert all(st[p].attached for p in points), st
    assert all(s.attached or s.error for s in st.values()), st


# How records reach user space (vtrace/live/transport.py): this kernel has BPF
# ring buffers; the perf-buffer fallback (kernels before 5.8) is forced here.
TRANSPORTS = ("ringbuf", "perf")
# How the guest points attach: tp_btf, this kernel's first choice, or the raw
# tracepoints a kernel without it gets (the same program source, probes/vtrace_tp.h).
RAW_ONLY = "kprobe,tracepoint,raw_tracepoint"
STRATEGY_ENV = {"tp_btf": "", "raw_tracepoint": RAW_ONLY}


def _strategy(monkeypatch, kind: str) -> None:
    monkeypatch.setenv("VTRACE_STRATEGIES", STRATEGY_ENV[kind])


def _attached_as(src, kind: str, *points: str) -> None:
    st = {s.point: s for s in src.probes()}
    assert all(st[p].strategy.startswith(f"{kind}:") for p in points), st


@contextlib.contextmanager
def _bare_counter(tracepoint: str, skip: str = "0"):
    """An independent witness: a bare raw-tracepoint program that only counts
    the tracepoint's hits (less those where ``skip``, C over ctx->args, is
    true). Yields a function returning the count."""
    from vtrace.kernel import headers
    os.environ.update(headers.bcc_env())
    from bcc import BPF
    text = (f"BPF_ARRAY(hits, u64, 1);\nRAW_TRACEPOINT_PROBE({tracepoint}) {{\n"
            f"\tint zero = 0;\n\tif ({skip}) return 0;\n"
            "\tu64 *n = hits.lookup(&zero);\n\tif (n) __sync_fetch_and_add(n, 1);\n\treturn 0;\n}\n")
    b = BPF(text=text.encode())
    try:
        yield lambda: int(b[b"hits"][ctypes.c_int(0)].value)
    finally:
        b.cleanup()


def _bare_irq_counter(irq: int):
    """The witness for one IRQ line's irq_handler_entry hits."""
    return _bare_counter("irq_handler_entry", f"(int)ctx->args[0] != {int(irq)}")


def _bare_completion_counter():
    """The witness for block_rq_complete: every blk-mq disk's (_mq_diskstats)."""
    return _bare_counter("block_rq_complete")


def _irq_number(name: str) -> int:
    with open("/proc/interrupts") as f:
        return next(int(ln.split(":")[0]) for ln in f if ln.split() and ln.split()[-1] == name)


@pytest.mark.parametrize("transport,strategy", [("ringbuf", "tp_btf"), ("perf", "tp_btf"),
                                                ("ringbuf", "raw_tracepoint")])
def test_guest_vring_interrupts_match_proc_interrupts(transport, strategy, monkeypatch):
    """Every interrupt /proc/interrupts counts for the disk's virtqueue, vtrace counts too.

    On this kernel (6.18 under Firecracker) BPF programs on irq_handler_entry
    now and then do not run for a burst of a queue's interrupts that
    /proc/interrupts counts, with recursion_misses 0: 25 to 77 of 6,006 in 4 of
    40 windows measured. A bare program that only counts the tracepoint's hits
    of that line misses exactly the same ones (and block_rq_complete misses the
    burst's completions alike), so it is not vtrace's program. vtrace is held
    to that witness exactly, every time (nothing lost that the tracepoint
    delivered, unless counted lost), and to /proc within 1% in one of up to
    three windows; a window where the witness itself fell short says so and
    is run again."""
    monkeypatch.setenv("VTRACE_EVENTS", transport)
    _strategy(monkeypatch, strategy)
    disk = os.path.basename(os.path.realpath("/sys/block/vda/device"))  # e.g. virtio1
    name = f"{disk}-req.0"
    short = []
    for _attempt in range(3):
        src = LiveSource(programs=("virtio",), batch_ms=100)
        assert src.info["events"] == transport
        src.start()
        _require_attached(src, "vring_interrupt")
        _attached_as(src, strategy, "vring_interrupt")
        with _bare_irq_counter(_irq_number(name)) as witness, _tracing(src) as result:
            before, t1, w0 = _proc_interrupts(), time.monotonic_ns(), witness()
            _direct_io(3000)
            after, t2, w1 = _proc_interrupts(), time.monotonic_ns(), witness()
        ev, objs = result["ev"], result["objs"]
        q = [o for o in objs.values() if o.device == disk and o.name == "req.0"]
        assert len(q) == 1, objs
        o = q[0]
        assert o.dev_type == "blk" and o.queue == 0 and o.size >= 64 and o.layer == Layer.VIRTIO_GUEST
        proc, seen = after[name] - before[name], w1 - w0
        assert proc >= 3000  # at least one interrupt per 2 requests under this load
        win = ev[(ev["obj"] == o.obj) & (ev["ts"] >= t1) & (ev["ts"] <= t2) & (ev["kind"] == Kind.SIGNAL)]
        lost = int(ev[ev["kind"] == Kind.LOST]["arg"].sum())
        print(f"vring interrupts in window: vtrace {win.size}, tracepoint {seen}, /proc/interrupts {proc}")
        assert seen - lost <= win.size <= seen, (win.size, seen, lost, proc)
        # used->idx read from the ring moves forward across the interrupts
        idx = win["arg"].astype(np.int64)
        assert ((np.diff(idx) & 0xFFFF) < 0x8000).all() and idx[-1] != idx[0]
        # free_descs: the driver's num_free as each interrupt came, before it reclaims
        # the completed buffer's descriptors, so below the ring size (dd: one request
        # at a time; an interrupt the previous handler already emptied sees it all free)
        free = win["aux2"].astype(np.int64)
        assert ((free >= 0) & (free <= o.size)).all(), free[free > o.size][:5]
        assert (free < o.size).mean() > 0.9, np.unique(free, return_counts=True)
        if abs(win.size - proc) <= max(2, proc // 100):
            break
        _short_witness("interrupts", seen, proc, max(2, proc // 100), win.size)
        short.append((win.size, seen, proc))
    else:
        pytest.fail(f"BPF on irq_handler_entry (vtrace's and a bare counter alike) fell short of /proc/interrupts "
                    f"by more than 1% in three windows (vtrace, bare counter, /proc): {short}")


def _diskstats_line(p: list[str]) -> int:
    n = int(p[3]) + int(p[7])
    if len(p) >= 18:
        n += int(p[14])
    if len(p) >= 20:
        n += int(p[18])
    return n


def _diskstats(disk: str) -> int:
    """Requests completed on ``disk``: reads + writes + discards + flushes (Documentation/admin-guide/iostats.rst)."""
    with open("/proc/diskstats") as f:
        for ln in f:
            p = ln.split()
            if p[2] == disk:
                return _diskstats_line(p)
    raise AssertionError(f"{disk} not in /proc/diskstats")


def _mq_diskstats() -> int:
    """Requests completed on every blk-mq disk (those with /sys/block/X/mq): what
    block_rq_complete fires for (bio-based ones like zram complete no request)."""
    with open("/proc/diskstats") as f:
        return sum(_diskstats_line(p) for p in map(str.split, f) if os.path.isdir(f"/sys/block/{p[2]}/mq"))


def _short_witness(what: str, seen: int, total: int, tol: int, got: int) -> None:
    """Why a window is run again: only because the tracepoint itself (the bare
    witness) fell short of the kernel's own count, never because vtrace did."""
    assert total - seen > tol, f"vtrace {got} {what} out of the kernel's {total}, though the tracepoint saw {seen}"
    print(f"BPF on the tracepoint did not run for {total - seen} of {total} {what}: another window")


@pytest.mark.parametrize("strategy", ["tp_btf", "raw_tracepoint"])
def test_block_requests_match_diskstats_and_fill_latency_histograms(strategy, monkeypatch):
    """Every request /proc/diskstats counts on vda, vtrace sees complete, in
    one of up to three windows: a window is run again only when a bare
    block_rq_complete counter fell short of diskstats too (BPF on a tracepoint
    now and then does not run for a burst here: see the interrupt test)."""
    _strategy(monkeypatch, strategy)
    short = []
    for _attempt in range(3):
        src = LiveSource(programs=("block",), batch_ms=100)
        src.start()
        assert all(s.attached for s in src.probes()), src.probes()
        _attached_as(src, strategy, "block_rq_issue", "block_rq_complete")
        agg = Aggregator()
        agg.set_source(src.info)
        with _bare_completion_counter() as witness, _tracing(src, agg) as result:
            before, all0, w0, t1 = _diskstats("vda"), _mq_diskstats(), witness(), time.monotonic_ns()
            _direct_io(2000)
            after, all1, w1, t2 = _diskstats("vda"), _mq_diskstats(), witness(), time.monotonic_ns()
        ev, objs = result["ev"], result["objs"]
        hq = [o for o in objs.values() if o.device == "vda"]
        assert hq and all(o.dev_type == "blk-mq" and o.name == f"hq{o.queue}" for o in hq)
        mine = np.isin(ev["obj"], [o.obj for o in hq])
        done = ev[mine & (ev["kind"] == Kind.USED) & (ev["ts"] >= t1) & (ev["ts"] <= t2)]
        delta = after - before
        lost = int(ev[ev["kind"] == Kind.LOST]["arg"].sum())
        print(f"vda requests completed in window: vtrace {done.size}, /proc/diskstats {delta}; "
              f"every blk-mq disk: tracepoint {w1 - w0}, diskstats {all1 - all0}; {lost} lost")
        tol = max(2, delta // 100)
        assert delta >= 4000
        if abs(done.size - delta) <= tol:
            break
        _short_witness("requests", w1 - w0, all1 - all0, tol, done.size)
        short.append((done.size, w1 - w0, delta, all1 - all0))
    else:
        pytest.fail(f"block_rq_complete (vtrace's and a bare counter alike) fell short of /proc/diskstats by more "
                    f"than 1% in three windows (vtrace, bare counter, vda, every blk-mq disk): {short}")
    # used_len is what the device wrote into memory: the 2000 reads' 4 KiB each, nothing for writes
    assert (done["len"] == 4096).sum() >= 2000 - tol and (done["len"] == 0).sum() >= 2000 - tol
    snap = agg.snapshot(close_interval=False)
    q = [x for x in snap.queues if x.device == "vda"]
    assert sum(x.latency_count for x in q) >= delta - tol and sum(int(x.latency_hist.sum()) for x in q) >= delta - tol


def test_tiny_kvm_guest_pio_and_irqfd():
    src = LiveSource(programs=("kvm",), batch_ms=100)
    src.start()
    got = {s.point: s for s in src.probes()}
    for p in ("pio", "userspace_exit", "set_irq", "msi"):
        assert got[p].attached, got[p]
    with _tracing(src, settle=0.5) as result:  # irqfd injection runs later, in a kworker
        r = kvmguest.run(37)
    ev, objs = result["ev"], result["objs"]
    mine = ev[ev["pid"] == r.pid]
    pio = mine[mine["kind"] == Kind.KVM_PIO]
    assert r.pio_exits == 37 and r.ioeventfd_count == 1
    assert (pio["id"] == kvmguest.PORT_OUT).sum() == 37
    assert set(pio["arg"][pio["id"] == kvmguest.PORT_OUT].tolist()) == {0x41}
    assert (pio["aux"] == 1).all() and (pio["len"] == 1).all()          # 1-byte OUTs
    assert (pio["id"] == kvmguest.PORT_EVENTFD).sum() == 1               # handled by the ioeventfd
    ue = mine[mine["kind"] == Kind.KVM_USERSPACE_EXIT]
    assert ue.size == 38 and set(ue["id"].tolist()) == {kvmguest.KVM_EXIT_IO}  # 37 + the done port
    # irqfd_inject runs in a kworker: the set_irq events are not the VMM's.
    irq = ev[(ev["kind"] == Kind.KVM_SET_IRQ) & (ev["id"] == kvmguest.IRQ_GSI)]
    assert sorted(irq["aux"].tolist()) == [0, 1]
    kvm_obj = [o for o in objs.values() if o.pid == r.pid]
    assert len(kvm_obj) == 1 and kvm_obj[0].dev_type == "kvm" and kvm_obj[0].vm.endswith(f"-{r.pid}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_live_capture_replays_to_the_same_totals(tmp_path, transport, monkeypatch):
    monkeypatch.setenv("VTRACE_EVENTS", transport)
    path = str(tmp_path / "live.vtrace")
    src = LiveSource(batch_ms=100, duration_ns=2_000_000_000)
    src.start()
    w = CaptureWriter(path, {"source": src.info})
    pipe = Pipeline(src, writer=w)
    io = threading.Thread(target=_direct_io, args=(1500,))
    io.start()
    snap = pipe.run()
    io.join()
    w.close({"ts_end": pipe.agg.ts_end})
    assert snap.events_total > 1000
    agg = Aggregator()
    rp = ReplaySource(path)
    Pipeline(rp, aggregator=agg).run()
    back = agg.snapshot(close_interval=False)
    key = lambda s: {(q.vm, q.device, q.name): (q.signals_total, q.kicks_total) for q in s.queues}  # noqa: E731
    assert key(back) == key(snap) and back.events_total == snap.events_total


def _bpf_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


@pytest.mark.parametrize("how", ["count", "SIGINT", "SIGTERM", "SIGTERM-perf"])
def test_no_program_stays_loaded_after_vtrace_exits(how, monkeypatch):
    if how.endswith("-perf"):  # the perf-buffer fallback's readers go with their programs too
        how = how.removesuffix("-perf")
        monkeypatch.setenv("VTRACE_EVENTS", "perf")
    before = _bpf_prog_ids()
    args = [sys.executable, "-m", "vtrace.cli", "stat", "--source", "live", "0.2"] + (["2"] if how == "count" else [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if how != "count":  # stat says it traces once every program is attached
        said = _until(p.stdout, "Tracing virtqueues")
        assert said[-1].startswith("Tracing virtqueues"), "".join(said)
    during = _bpf_prog_ids()
    if how != "count":
        p.send_signal(getattr(signal, how))
    out, err = p.communicate(timeout=60)
    assert p.returncode in ((0,) if how != "SIGINT" else (0, 130)), err
    assert "Tracebac" not in err
    after = _bpf_prog_ids()
    if how != "count":
        assert during - before, "vtrace's programs were not loaded while it ran"
    assert not (after - before), f"left loaded: {after - before}"


def test_probes_command_lists_points_and_strategies():
    r = subprocess.run([sys.executable, "-m", "vtrace.cli", "probes"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for point, tp in (("vring_interrupt", "irq_handler_entry"), ("block_rq_issue", "block_rq_issue"),
                      ("block_rq_complete", "block_rq_complete")):
        assert re.search(rf"virtio-guest\s+{point}\s+tp_btf:{tp}\s+\d+\s+attached", r.stdout), r.stdout
    assert re.search(r"kvm\s+pio\s+tracepoint:kvm:kvm_pio\s+\d+\s+attached", r.stdout)


def test_probes_command_without_tp_btf_takes_raw_tracepoints():
    r = subprocess.run([sys.executable, "-m", "vtrace.cli", "probes"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VTRACE_STRATEGIES": RAW_ONLY})
    assert r.returncode == 0, r.stderr
    assert re.search(r"virtio-guest\s+vring_interrupt\s+raw_tracepoint:irq_handler_entry\s+\d+\s+attached", r.stdout)
    assert re.search(r"virtio-guest\s+block_rq_issue\s+raw_tracepoint:block_rq_issue\s+\d+\s+attached", r.stdout)


def test_vtrace_mounts_tracefs_when_nothing_has():
    """A host booted without tracefs (CI's machines are): vtrace mounts it, as perf
    does, says so once on stderr, and attaches its tracepoints. In a mount namespace
    of its own, so that the host's mounts are not touched."""
    script = ("umount /sys/kernel/debug/tracing 2>/dev/null; while umount /sys/kernel/tracing 2>/dev/null; do :; done; "
              "umount /sys/kernel/debug 2>/dev/null; test ! -d /sys/kernel/tracing/events || exit 99; "
              f"exec {sys.executable} -m vtrace.cli probes")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("vtrace: tracefs was not mounted; mounted it at /sys/kernel/tracing\n") == 1, r.stderr
    # tp_btf needs no tracefs; the kvm tracepoints below do
    assert re.search(r"virtio-guest\s+vring_interrupt\s+tp_btf:irq_handler_entry\s+\d+\s+attached", r.stdout)
    assert re.search(r"kvm\s+pio\s+tracepoint:kvm:kvm_pio\s+\d+\s+attached", r.stdout), r.stdout


def test_ebpf_prints_the_program_with_its_btf_offsets():
    r = subprocess.run([sys.executable, "-m", "vtrace.cli", "probes", "--ebpf"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    off = btf.member("virtqueue", "num_free").offset
    assert f"#define OFF_VQ_NUM_FREE {off}" in r.stdout and "TP_PROBE(irq_handler_entry)" in r.stdout
    assert "#define TP_BTF_irq_handler_entry 1" in r.stdout  # attached as tp_btf here


def test_check_runs_on_the_live_source():
    """`vtrace check --source live`: real block requests pair up; no divergence, exit 0."""
    p = subprocess.Popen([sys.executable, "-m", "vtrace.cli", "check", "--source", "live", "-d", "6s", "-j"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = _until(p.stderr, "Checking virtqueues")  # compiled and attached
    assert said[-1].startswith("Checking virtqueues"), "".join(said)
    _direct_io(1000)
    out, err = p.communicate(timeout=120)
    err = "".join(said) + err
    assert p.returncode == 0, (out[-2000:], err)
    res = json.loads(out)
    assert res["events"] >= 2000
    tally = {r["id"]: r for r in res["rules"]}
    assert tally["used-unknown-id"]["checked"] >= 1000 and tally["used-twice"]["checked"] >= 1000


def _until(stream, prefix: str) -> list[str]:
    """The lines ``stream`` gives up to the first that starts with ``prefix`` (or its end)."""
    said = []
    for line in stream:
        said.append(line)
        if line.startswith(prefix):
            break
    return said or [""]


def test_probes_stats_counts_hits_and_restores_the_knob():
    knob = "/proc/sys/kernel/bpf_stats_enabled"
    before = open(knob).read().strip()
    # The I/O goes between vtrace saying it counts and Ctrl-C: a fixed sleep
    # before it and a 5 s window once let CI attach late and miss 63 of 1,000
    # interrupts (937 counted).
    p = subprocess.Popen([sys.executable, "-m", "vtrace.cli", "probes", "--stats", "120s", "-j"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = _until(p.stderr, "Counting for")
    assert said[-1].startswith("Counting for"), "".join(said)
    _direct_io(500)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    err = "".join(said) + err
    assert p.returncode == 0, err
    rows = {r["point"]: r for r in map(json.loads, out.splitlines())}
    for point in ("vring_interrupt", "block_rq_issue", "block_rq_complete"):
        assert rows[point]["run_cnt"] >= 1000 and rows[point]["ns_per_hit"] > 0, rows[point]
    assert open(knob).read().strip() == before


def test_interrupts_count_in_the_queues_own_slot():
    """Counting mode sums a virtqueue's interrupts in slot vq_slot(irq, index) of the
    per-CPU irq_slots array (probes/virtio.bpf.c), and user space reads that same
    slot: the disk's queue is held there and in no other slot, or, where another
    queue took it first, counts in the `counts` hash instead. Its line is the one
    /proc/interrupts names."""
    src = LiveSource(programs=("virtio",), batch_ms=100, stream=False)
    src.start()
    try:
        _require_attached(src, "vring_interrupt")
        _direct_io(200)
        bpf = src.bpf("virtio")
        disk = os.path.basename(os.path.realpath("/sys/block/vda/device"))  # virtio<N>
        info = {int(k.value): v for k, v in bpf[b"vq_info"].items()}
        obj = next(o for o, v in info.items() if v.name == b"req.0" and v.vdev_index == int(disk[len("virtio"):]))
        slot = vq_slot(_irq_number(f"{disk}-req.0"), 0)
        slots = bpf[b"irq_slots"]
        where = {i for i in range(VQ_SLOTS) for v in slots[slots.Key(i)] if v.obj == obj}
        hashed = sum(v.n for k, per_cpu in bpf[b"counts"].items() if k.obj == obj and k.kind == Kind.SIGNAL
                     for v in per_cpu)
        if where:
            assert where == {slot}, (where, slot)
            assert info[obj].irq == _irq_number(f"{disk}-req.0")  # where user space looks
            assert sum(v.n for v in slots[slots.Key(slot)] if v.obj == obj) >= 200
        else:  # its slot was taken on every CPU it ran on: each holder is another known queue
            held = {v.obj for v in slots[slots.Key(slot)]} - {0}
            assert held and held <= set(info) - {obj} and hashed >= 200, (held, hashed)
    finally:
        src.close()


def test_block_requests_count_in_their_queues_own_slot():
    """Counting under tp_btf: a hardware queue's requests, latency and in-flight
    clocks live at the slot it claimed (probes/block.bpf.c hq_slots, hq_owner,
    hq_flight), not in the hashes: vda's queue owns one, hq_info says which, the
    slot holds every request and its latency, and `counts`, `lat` and `flight`
    hold nothing of it. Nothing is left in flight once the I/O is done."""
    src = LiveSource(programs=("block",), batch_ms=100, stream=False)
    src.start()
    try:
        _attached_as(src, "tp_btf", "block_rq_issue", "block_rq_complete")
        bpf = src.bpf("block")
        before = _diskstats("vda")
        _direct_io(500)
        req = _diskstats("vda") - before
        info = {int(k.value): v for k, v in bpf[b"hq_info"].items() if v.disk == b"vda"}
        assert info and all(v.slot != 0xFFFFFFFF for v in info.values()), info
        owner = bpf[b"hq_owner"]
        slots = bpf[b"hq_slots"]
        done = lat = 0
        for obj, v in info.items():
            assert owner[owner.Key(v.slot)].value == obj
            per_cpu = slots[slots.Key(v.slot)]
            done += sum(x.n[1] for x in per_cpu)
            lat += sum(b.n for x in per_cpu for b in x.lat)
        assert req <= done and lat >= req - 2, (req, done, lat)  # from attach: a request or two in flight then
        assert not [k for k in bpf[b"counts"].keys() if k.obj in info]
        assert not [k for k in bpf[b"lat"].keys() if k.obj in info]
        assert not [k for k in bpf[b"flight"].keys() if k.obj in info]
        flight = bpf[b"hq_flight"]
        with open("/sys/block/vda/inflight") as f:
            busy = sum(map(int, f.read().split()))  # the machine's own I/O may be on the disk right now
        held = sum(flight[flight.Key(v.slot * 1024 + t)].value != 0 for v in info.values() for t in range(1024))
        assert held <= busy + 1, (held, busy)
    finally:
        src.close()


@pytest.mark.parametrize("strategy", ["tp_btf", "raw_tracepoint"])
def test_counting_in_kernel_matches_proc_interrupts_and_diskstats(strategy, monkeypatch):
    """stat's mode: hot events summed in kernel maps, read as deltas. The totals
    still match the kernel's own counters, latency lands in log2 buckets, and
    nothing stays in flight once the I/O is done. Interrupts and completions
    are also held to bare programs counting the tracepoints' hits, which now
    and then fall short of /proc themselves
    (test_guest_vring_interrupts_match_proc_interrupts)."""
    _strategy(monkeypatch, strategy)
    disk = os.path.basename(os.path.realpath("/sys/block/vda/device"))
    name = f"{disk}-req.0"
    short = []
    for _attempt in range(3):
        with _bare_irq_counter(_irq_number(name)) as witness, _bare_completion_counter() as done_witness:
            w_start = witness()
            src = LiveSource(programs=("virtio", "block"), batch_ms=100, stream=False)
            src.start()
            _require_attached(src, "vring_interrupt", "block_rq_issue", "block_rq_complete")
            _attached_as(src, strategy, "vring_interrupt", "block_rq_issue", "block_rq_complete")
            agg = Aggregator()
            agg.set_source(src.info)
            with _tracing(src, agg) as result:
                irq0, req0, w0 = _proc_interrupts()[name], _diskstats("vda"), witness()
                all0, d0 = _mq_diskstats(), done_witness()
                _direct_io(2000)
                irq1, req1, w1 = _proc_interrupts()[name], _diskstats("vda"), witness()
                all1, d1 = _mq_diskstats(), done_witness()
            w_end = witness()
        assert result["ev"].size == 0  # nothing hot was streamed
        snap = agg.snapshot(close_interval=False)
        q = {(x.device, x.name): x for x in snap.queues}
        vq, hq = q[(disk, "req.0")], [x for x in snap.queues if x.device == "vda"]
        irq, req, seen = irq1 - irq0, req1 - req0, w1 - w0
        used = sum(x.used_total for x in hq)
        print(f"counting: interrupts vtrace {vq.signals_total} tracepoint {seen} /proc {irq}; requests vtrace "
              f"{used} diskstats {req}, every blk-mq disk: tracepoint {d1 - d0} diskstats {all1 - all0}")
        # vtrace counted from attach to the last read: the measured window plus
        # a little idle time, inside the witness's span
        assert seen - snap.lost_total <= vq.signals_total <= w_end - w_start, (vq.signals_total, seen, irq)
        assert irq >= 3000 and req >= 4000
        tol_irq, tol = max(2, irq // 100), max(2, req // 100)
        irq_ok, req_ok = abs(vq.signals_total - irq) <= tol_irq, abs(used - req) <= tol
        if irq_ok and req_ok:
            break
        if not irq_ok:
            _short_witness("interrupts", seen, irq, tol_irq, vq.signals_total)
        if not req_ok:
            _short_witness("requests", d1 - d0, all1 - all0, tol, used)
        short.append((vq.signals_total, seen, irq, used, d1 - d0, req))
    else:
        pytest.fail(f"BPF on irq_handler_entry or block_rq_complete (vtrace's and a bare counter alike) fell short "
                    f"of /proc by more than 1% in three windows (interrupts: vtrace, bare counter, /proc; requests: "
                    f"vtrace, bare counter, diskstats): {short}")
    # Requests within 1% rather than exact: under CPU load the kernel's counters
    # run 1-6 per 4000 ahead of the block_rq_complete tracepoint itself (the
    # bare counter missed the same; recursion_misses stayed 0).
    assert req - tol <= sum(x.latency_count for x in hq) <= used
    assert all(not x.latency_exact for x in hq if x.latency_count) and any(x.p99_ns for x in hq)
    # nothing stays in flight but the completions the tracepoint itself missed
    assert sum(x.in_flight for x in hq) <= max(0, req - used) and snap.lost_total == 0
    assert sum(x.used_bytes_total for x in hq) >= (2000 - tol) * 4096  # the reads' data, as the block test
    # every counted interrupt summed the driver's free descriptors: one request
    # at a time holds a few of the ring's, never all
    assert vq.free_at_signal_count_total == vq.signals_total
    assert vq.size - 8 <= vq.free_at_signal_sum_total / vq.free_at_signal_count_total < vq.size


@pytest.mark.parametrize("stream,transport", [(True, "ringbuf"), (False, "ringbuf"), (True, "perf")],
                         ids=["stream", "count", "stream-perf"])
def test_tiny_kvm_guest_counts_the_same_either_way(stream, transport, monkeypatch):
    monkeypatch.setenv("VTRACE_EVENTS", transport)
    src = LiveSource(programs=("kvm",), batch_ms=100, stream=stream)
    src.start()
    agg = Aggregator()
    agg.set_source(src.info)
    with _tracing(src, agg, settle=0.5):
        r = kvmguest.run(37)
    snap = agg.snapshot(close_interval=False)
    vm = [v for v in snap.vms if v.pid == r.pid]
    assert len(vm) == 1, snap.vms
    kinds = dict(vm[0].__dict__)
    print(kinds)
    # 37 OUTs to the test port, one to the ioeventfd port, one to the done port
    assert kinds["pio_total"] == 39 and kinds["userspace_exits_total"] == 38, kinds


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_capture_stopped_right_after_the_workload_keeps_its_last_events(tmp_path, how):
    """The rings are drained every 50 ms and batched every 200 ms: a stop must
    still read what came since the last batch (found in the vmlab, where a
    capture lost a VMM's whole last phase)."""
    path = tmp_path / "stop.vtrace"
    p = subprocess.Popen([sys.executable, "-m", "vtrace.cli", "capture", "--source", "live", "-f", "-o", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "Hit Ctrl-C" in line, line + p.stderr.read()
    before = _diskstats("vda")
    _direct_io(300)
    delta = _diskstats("vda") - before
    p.send_signal(getattr(signal, how))  # at once: the last completions are still in the ring
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    back = Aggregator()
    Pipeline(ReplaySource(str(path)), aggregator=back).run()
    snap = back.snapshot(close_interval=False)
    used = sum(q.used_total for q in snap.queues if q.device == "vda")
    tol = max(2, delta // 100)  # the tracepoint's own few misses under load (see above)
    assert delta >= 600 and used >= delta - tol, f"captured {used} of {delta} completions ({err.strip()})"


def test_block_queue_that_cannot_be_named_is_counted_lost():
    """hq_info (obj -> disk, hardware queue) holds 1,024 queues. With it full,
    a new queue's requests cannot be named in user space: the program drops
    them and counts each as lost, as the virtio program does with vq_info."""
    span0 = _mq_diskstats()
    src = LiveSource(programs=("block",), batch_ms=100)
    src.start()
    bpf = src.bpf("block")
    info = bpf[b"hq_info"]
    for k in range(1, 1025):  # small numbers: never a gendisk pointer plus a queue number
        info[info.Key(k * 2 + 1)] = info.Leaf()
    with _tracing(src) as result:
        before = _diskstats("vda")
        _direct_io(200)
        req = _diskstats("vda") - before
    span = _mq_diskstats() - span0  # every request the program could have seen, other I/O included
    ev, objs = result["ev"], result["objs"]
    lost = int(ev[ev["kind"] == Kind.LOST]["arg"].sum())
    assert not [o for o in objs.values() if o.device == "vda"]
    # issue and completion both drop the event: two lost per request (CI failed
    # an upper bound of the workload's alone: 848 for 404, the machine's own I/O)
    assert 2 * req - max(2, req // 50) <= lost <= 2 * span + 32, (lost, req, span)  # + what was in flight
