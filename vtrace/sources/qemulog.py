"""QemuLogSource: QEMU's own trace events (the "log" backend) as vtrace events.

QEMU run with ``-trace 'virtqueue_*' -trace 'virtio_*' -D FILE -msg
timestamp=on`` writes one line per event, ``TID@SEC.USEC:name args``
(scripts/tracetool/backend/log.py; the format strings are
hw/virtio/trace-events). This module turns the virtio device model's
events into the records the probes produce, so the checker can judge
QEMU's emulated devices (and vhost-vdpa back ends) by the same rules.

What QEMU's events carry, and what vtrace makes of them:
- virtqueue_pop(vq, elem, in_num, out_num) -> FETCH. QEMU does not trace
  the descriptor head, so heads are numbered here: each popped element
  (``elem``, live until it is filled) gets the number freed longest ago on
  its queue (a new one when none is free): unique while in flight and
  bounded by the most buffers ever in flight. Byte lengths are not traced either: writable/readable bytes
  are UNOBSERVED, descs = in_num + out_num. last_avail_idx counts pops since
  the last reset (virtqueue_unpop and virtqueue_rewind are not traced).
- virtqueue_fill(vq, elem, len, idx) -> USED at used idx + idx + 1;
  virtqueue_flush(vq, count) advances the used idx (virtio.c
  virtqueue_split_flush: used->idx += count).
- virtio_queue_notify(vdev, n, vq) -> KICK (avail idx unobserved); it also
  names the queue's index. With ioeventfd (KVM) QEMU takes kicks through
  virtio_queue_host_notifier_read, which is not traced: no kicks then, and
  queue indices come from address order within the device (reported).
- virtio_notify / virtio_notify_irqfd(vdev, vq) -> SIGNAL. QEMU traces only
  notifications it sends (after virtio_should_notify), never suppressed ones.
- virtio_set_status(vdev, 0) -> RESET of the device (virtio_reset).
- vhost_vdpa_suspend / get_vring_base / set_vring_base / reset_device /
  dev_start -> SUSPEND / VRING_BASE_GET / VRING_BASE_SET / RESET / RESUME;
  vhost_vdpa_get_device_id and set_features give the vdpa device's type and
  negotiated features.
Device types: virtio_blk_* events name their vdev (blk); vdpa devices report
their id. Others are "unknown" unless given (``types={"vdev1": "net"}``, or
``{"*": "net"}`` for every device the log does not type).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from vtrace.events import NO_QUEUE, RECORD_DTYPE, UNOBSERVED, Batch, Kind, Layer, ObjectInfo
from vtrace.model.devtypes import DEVICE_IDS
from vtrace.sources.base import Source

BATCH = 65536
U16 = 0xFFFF
TYPES = ("net", "blk", "vsock", "console", "rng", "scsi", "fs", "unknown")

# TID@SEC.USEC:name args   (-msg timestamp=on)   or   name args
_LINE = re.compile(r"^(?:(\d+)@(\d+)\.(\d{1,9}):)?([a-z_][a-z0-9_]*)(?: (.*))?$")

# The events this source understands: name -> argument keys in order.
EVENTS: dict[str, tuple[str, ...]] = {
    "virtqueue_pop": ("vq", "elem", "in_num", "out_num"),
    "virtqueue_fill": ("vq", "elem", "len", "idx"),
    "virtqueue_flush": ("vq", "count"),
    "virtio_queue_notify": ("vdev", "n", "vq"),
    "virtio_notify": ("vdev", "vq"),
    "virtio_notify_irqfd": ("vdev", "vq"),
    "virtio_set_status": ("vdev", "val"),
    "vhost_vdpa_suspend": ("dev",),
    "vhost_vdpa_dev_start": ("dev", "started"),
    "vhost_vdpa_reset_device": ("dev", "status"),
    "vhost_vdpa_get_vring_base": ("dev", "index", "num"),
    "vhost_vdpa_set_vring_base": ("dev", "index", "num"),
    "vhost_vdpa_get_device_id": ("dev", "device_id"),
    "vhost_vdpa_set_features": ("dev", "features"),
}
# Events that name a virtio-blk device (hw/block/trace-events).
_BLK = ("virtio_blk_req_complete", "virtio_blk_rw_complete", "virtio_blk_handle_read",
        "virtio_blk_handle_write", "virtio_blk_submit_multireq")
# Events understood but not turned into records.
_CONTEXT = frozenset(_BLK) | {"virtqueue_alloc_element"}


class QemuLogError(ValueError):
    """The file is not a QEMU trace log this source can read."""


def _num(tok: str) -> int:
    if tok == "(nil)":
        return 0
    return int(tok, 0)


def parse_args(rest: str) -> dict[str, str]:
    """'vq 0x1 elem 0x2 len 3' and 'dev: 0x1 index: 0' -> {key: value}."""
    toks = rest.split()
    return {toks[i].rstrip(":"): toks[i + 1] for i in range(0, len(toks) - 1, 2)}


def _ptr_eq(key: str, ptr: int) -> bool:
    try:
        return key.startswith("0x") and int(key, 16) == ptr
    except ValueError:
        return False


def _vdpa_queue(dev: int, index: int) -> int:
    # A vdpa queue has no pointer of its own in the trace: derive a stable
    # object id from (dev, index). User-space pointers stay below 2^47.
    return dev | ((index + 1) << 48)


@dataclass
class LogStats:
    lines: int = 0
    events: int = 0           # records produced
    used_lines: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)  # other trace events, by name
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)
    clamped: int = 0          # lines whose timestamp went backwards (kept in file order)
    unknown_elems: int = 0    # fills of elements never popped in this log
    filled_again: int = 0     # fills of elements already filled (and not popped since)
    inferred_index: int = 0   # queues whose index came from address order
    placed_by_address: int = 0  # queues whose device came from address proximity
    unflushed: int = 0        # fills never flushed when the log ended

    def bad_line(self, lineno: int, why: str) -> None:
        self.bad += 1
        if len(self.first_bad) < 3:
            self.first_bad.append(f"line {lineno}: {why}")


@dataclass
class _Dev:
    ptr: int
    name: str = ""
    dev_type: str = "unknown"
    how: str = ""          # where the type came from
    vdpa: bool = False
    features: int = 0
    queues: dict[int, int] = field(default_factory=dict)  # vq object -> index


@dataclass
class _Vq:
    """One queue's element -> head numbering.

    Released heads are reused oldest first, so a head stays unique for as
    long as possible after its completion: a second fill of the same element
    then still names the head it had (used twice), not a newer buffer's.
    """

    obj: int
    dev: int
    index: int
    heads: dict[int, int] = field(default_factory=dict)   # elem -> head, in flight
    descs: dict[int, int] = field(default_factory=dict)   # elem -> descriptor count
    done: dict[int, int] = field(default_factory=dict)    # elem -> head, completed
    done_head: dict[int, int] = field(default_factory=dict)  # head -> elem, completed
    free: deque = field(default_factory=deque)
    next_head: int = 0
    pops: int = 0
    used: int = 0
    pending: int = 0        # fills not yet flushed

    def take(self, elem: int) -> int:
        h = self.heads.get(elem)
        if h is not None:
            return h  # popped again without being filled: the same buffer
        if elem in self.done:
            self.done_head.pop(self.done.pop(elem), None)
        h = self.free.popleft() if self.free else self.fresh()
        old = self.done_head.pop(h, None)
        if old is not None:
            self.done.pop(old, None)
        self.heads[elem] = h
        return h

    def fresh(self) -> int:
        h = self.next_head
        self.next_head += 1
        return h

    def release(self, elem: int) -> tuple[int | None, bool]:
        """(head, again): the element's head; again when it was already filled."""
        h = self.heads.pop(elem, None)
        if h is None:
            h = self.done.get(elem)
            return h, h is not None
        self.descs.pop(elem, None)
        self.free.append(h)
        self.done[elem] = h
        self.done_head[h] = elem
        return h, False

    def reset(self) -> None:
        for m in (self.heads, self.descs, self.done, self.done_head):
            m.clear()
        self.free = deque(range(self.next_head))
        self.pops = self.used = self.pending = 0


def _lines(path: str, stats: LogStats | None) -> Iterator[tuple]:
    """(lineno, tid, sec, frac, name, args) as strings for each well-formed line."""
    match = _LINE.match
    lineno = 0
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, start=1):
            m = match(raw.rstrip("\n"))
            if m is None:
                if stats is not None and raw.strip():
                    stats.bad_line(lineno, f"not a trace line: {raw.strip()[:60]!r}")
                continue
            yield (lineno,) + m.groups()
    if stats is not None:
        stats.lines = lineno


def _ts(sec: str, frac: str) -> int:
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0"))


class QemuLogSource(Source):
    """A QEMU trace log read as batches (two passes: identities, then events)."""

    kind = "qemu-log"

    def __init__(self, path: str, *, vm: str | None = None, types: dict[str, str] | None = None,
                 line_time: bool = False):
        self.path = path
        self.stats = LogStats()
        self.line_time = line_time
        self.types = dict(types or {})
        try:
            self._identify()
        except OSError as e:
            raise QemuLogError(f"cannot read {path}: {e.strerror}") from None
        self.vm = vm or (f"qemu-{self.pid}" if self.pid else "qemu")
        self.objects = self._objects()

    # pass 1: who is who -------------------------------------------------------
    def _identify(self) -> None:
        devs: dict[int, _Dev] = {}
        vq_dev: dict[int, int] = {}
        vq_index: dict[int, int] = {}
        vdpa_queues: dict[tuple[int, int], None] = {}
        popped_vqs: dict[int, None] = {}
        tids: set[int] = set()
        timed = untimed = events = 0

        def dev(ptr: int, vdpa: bool = False) -> _Dev:
            d = devs.get(ptr)
            if d is None:
                d = devs[ptr] = _Dev(ptr, vdpa=vdpa)
            return d

        data_path = ("virtqueue_pop", "virtqueue_fill", "virtqueue_flush")
        vq_tokens: dict[str, None] = {}
        for _lineno, tid, sec, _frac, name, rest in _lines(self.path, None):
            if name not in EVENTS and name not in _CONTEXT:
                continue
            events += 1
            if sec is None:
                untimed += 1
            else:
                timed += 1
                tids.add(tid)
            try:
                if name in data_path:  # the hot lines: only the queue matters here
                    vq_tokens[rest.split(None, 2)[1]] = None
                    continue
                a = parse_args(rest or "")
                if name == "virtio_queue_notify":
                    vq, d = _num(a["vq"]), dev(_num(a["vdev"]))
                    vq_dev[vq] = d.ptr
                    vq_index[vq] = int(a["n"])
                elif name in ("virtio_notify", "virtio_notify_irqfd"):
                    vq_dev.setdefault(_num(a["vq"]), dev(_num(a["vdev"])).ptr)
                elif name == "virtio_set_status":
                    dev(_num(a["vdev"]))
                elif name in _BLK:
                    d = dev(_num(a["vdev"]))
                    d.dev_type, d.how = "blk", name
                elif name.startswith("vhost_vdpa_"):
                    d = dev(_num(a["dev"]), vdpa=True)
                    if name == "vhost_vdpa_get_device_id":
                        d.dev_type = DEVICE_IDS.get(int(a["device_id"]), "unknown")
                        d.how = f"{name} {a['device_id']}"
                    elif name == "vhost_vdpa_set_features":
                        d.features = _num(a["features"])
                    elif "index" in a:
                        vdpa_queues.setdefault((d.ptr, int(a["index"])), None)
            except (KeyError, ValueError):
                continue  # pass 2 reports it
        if events and not timed and not self.line_time:
            raise QemuLogError(f"{self.path}: QEMU trace lines carry no timestamps; run QEMU with "
                               "-msg timestamp=on (or pass --line-time to number lines as microseconds)")
        if not events:
            raise QemuLogError(f"{self.path}: no virtio trace events (run QEMU with -trace 'virtqueue_*' "
                               "-trace 'virtio_*' -D FILE -msg timestamp=on)")
        for tok in vq_tokens:
            try:
                popped_vqs.setdefault(_num(tok), None)
            except ValueError:
                continue  # pass 2 reports the line
        self.pid = min(int(t) for t in tids) if tids else 0  # the main thread's id is the process id
        self._place_queues(devs, vq_dev, vq_index, popped_vqs)
        for (ptr, index) in vdpa_queues:
            devs[ptr].queues[_vdpa_queue(ptr, index)] = index
        # Names in order of first appearance: vdev0, vdev1, ... (vdpa0 ...).
        nv = nd = 0
        for d in devs.values():
            if d.vdpa:
                d.name, nd = f"vdpa{nd}", nd + 1
            else:
                d.name, nv = (f"vdev{nv}", nv + 1) if d.ptr else ("vdev?", nv)
        for key, t in sorted(self.types.items(), key=lambda kv: kv[0] == "*"):  # named ones first
            if t not in TYPES:
                raise QemuLogError(f"unknown device type {t!r} (one of {', '.join(TYPES)})")
            if key == "*":
                for d in devs.values():
                    if d.dev_type == "unknown" and d.ptr:
                        d.dev_type, d.how = t, "--type"
                continue
            hits = [d for d in devs.values() if d.name == key or _ptr_eq(key, d.ptr)]
            if not hits:
                raise QemuLogError(f"--type {key}={t}: no device {key} in {self.path} "
                                   f"(devices: {', '.join(d.name for d in devs.values())})")
            for d in hits:
                d.dev_type, d.how = t, "--type"
        self.devs = devs
        self._vq_of = {vq: (d, i) for d in devs.values() for vq, i in d.queues.items()}

    def _place_queues(self, devs, vq_dev, vq_index, popped_vqs) -> None:
        """Give every queue a device and an index.

        virtio_queue_notify names both; virtio_notify names the device. A
        queue named by neither (ioeventfd kicks, a polled queue that never
        interrupts) is placed by address: vdev->vq is one array of
        VirtQueue (virtio.c virtio_init: g_new0(VirtQueue, VIRTIO_QUEUE_MAX)),
        so the stride between a device's queues and a known index fix the rest.
        """
        for vq in popped_vqs:
            vq_dev.setdefault(vq, 0)
        by_dev: dict[int, list[int]] = {}
        for vq, d in vq_dev.items():
            if d:
                by_dev.setdefault(d, []).append(vq)
        stride = 0
        for vqs in by_dev.values():
            vqs.sort()
            for a, b in zip(vqs, vqs[1:]):
                stride = math.gcd(stride, b - a)
        span = (stride or 0x100) * 1024  # VIRTIO_QUEUE_MAX queues
        for vq, d in list(vq_dev.items()):
            if d:
                continue
            near = [(vq - v if vq > v else v - vq, dd) for dd, vqs in by_dev.items() for v in vqs
                    if abs(vq - v) < span and (not stride or (vq - v) % stride == 0)]
            if near:
                vq_dev[vq] = min(near)[1]
                self.stats.placed_by_address += 1
        if any(d == 0 for d in vq_dev.values()):
            devs.setdefault(0, _Dev(0)).how = "queues no notify or kick named"
        for vq, d in vq_dev.items():
            devs[d].queues[vq] = vq_index.get(vq, -1)
        for d in devs.values():
            if all(i >= 0 for i in d.queues.values()):
                continue
            anchor = next(((vq, i) for vq, i in sorted(d.queues.items()) if i >= 0), None)
            known = {i for i in d.queues.values() if i >= 0}
            guess = iter(i for i in range(1 << 16) if i not in known)
            for vq in sorted(d.queues):
                if d.queues[vq] >= 0:
                    continue
                if stride and d.ptr:
                    base = anchor[0] - anchor[1] * stride if anchor else min(d.queues)
                    d.queues[vq] = (vq - base) // stride
                else:
                    d.queues[vq] = next(guess)  # address order is index order
                self.stats.inferred_index += 1

    @staticmethod
    def queue_names(dev_type: str, indices: list[int]) -> dict[int, str]:
        """Queue names by device type, so the device-type rules know each queue's role."""
        if dev_type == "net":
            # §5.1.2: receiveqN = 2N, transmitqN = 2N+1, controlq after the last
            # pair. QEMU's max_queue_pairs is not in the trace: an even index
            # right after the highest transmit queue is the control queue.
            top = max(indices, default=-1)
            ctrl = top if top > 0 and top % 2 == 0 and top - 1 in indices else None
            return {i: "ctrl" if i == ctrl else f"{'rx' if i % 2 == 0 else 'tx'}{i // 2}" for i in indices}
        if dev_type == "vsock":
            return {i: ("rx", "tx", "event")[i] if i < 3 else "" for i in indices}  # §5.10.2
        if dev_type == "blk":
            return {i: f"req{i}" for i in indices}  # §5.2.2
        return {i: "" for i in indices}

    def _objects(self) -> tuple[ObjectInfo, ...]:
        objs = []
        for d in self.devs.values():
            # vdpa queues are run by the vhost back end; the rest by QEMU's device model.
            lay = int(Layer.VHOST) if d.vdpa else int(Layer.QEMU)
            objs.append(ObjectInfo(obj=d.ptr or 1, vm=self.vm, device=d.name, dev_type=d.dev_type,
                                   layer=lay, pid=self.pid, features=d.features))
            names = self.queue_names(d.dev_type, sorted(d.queues.values()))
            for vq, index in sorted(d.queues.items(), key=lambda kv: kv[1]):
                objs.append(ObjectInfo(obj=vq, vm=self.vm, device=d.name, dev_type=d.dev_type, queue=index,
                                       name=names[index], layer=lay, pid=self.pid, features=d.features))
        return tuple(objs)

    # what a source says about itself -------------------------------------------
    @property
    def info(self) -> dict:
        return {"source": "qemu-log", "file": self.path, "host": self.vm, "kernel": "qemu",
                "simulated": False, "vm": self.vm,
                "devices": {d.name: {"ptr": hex(d.ptr), "type": d.dev_type, "how": d.how,
                                     "queues": sorted(d.queues.values())} for d in self.devs.values()}}

    def probes(self) -> tuple:
        return ()

    def align(self, interval_ns: int) -> None:
        pass  # every count is in the events: nothing to line up

    def final(self) -> list[Batch]:
        return []  # the log is read to its end by batches()

    def damage(self) -> str | None:
        s = self.stats
        if not s.bad:
            return None
        return f"{self.path}: {s.bad} malformed lines skipped ({'; '.join(s.first_bad)})"

    def close(self) -> None:
        pass

    def summary_lines(self) -> list[str]:
        """What was understood, for stderr after an import (call after batches())."""
        s = self.stats
        out = []
        for d in self.devs.values():
            qs = " ".join(str(i) for i in sorted(d.queues.values()))
            how = f" ({d.how})" if d.how else ""
            hint = (f"; give its type with -t {d.name}=net|blk|vsock|... for the device-type rules"
                    if d.dev_type == "unknown" and d.queues else "")
            out.append(f"  {d.name} {d.ptr:#x}: {d.dev_type}{how}, queues {qs or '-'}{hint}")
        used = ", ".join(f"{n} {c:,}" for n, c in sorted(s.used_lines.items()))
        out.append(f"  read {s.lines:,} lines: {used or 'no virtio events'}")
        if s.ignored:
            top = sorted(s.ignored.items(), key=lambda kv: -kv[1])
            out.append(f"  ignored {sum(s.ignored.values()):,} other trace events: "
                       + ", ".join(f"{n} {c:,}" for n, c in top[:6]) + (" ..." if len(top) > 6 else ""))
        warn = []
        if s.inferred_index or s.placed_by_address:
            warn.append(f"{s.inferred_index} queue indices and {s.placed_by_address} queue owners inferred "
                        "from address order (no virtio_queue_notify for them: ioeventfd on? add "
                        "ioeventfd=off to the device)")
        if s.unknown_elems:
            warn.append(f"{s.unknown_elems} fills of elements never popped in this log")
        if s.filled_again:
            warn.append(f"{s.filled_again} fills of elements that were already filled")
        if s.unflushed:
            warn.append(f"{s.unflushed} fills never flushed before the log ended")
        if s.clamped:
            warn.append(f"{s.clamped} timestamps went backwards (threads); kept in file order")
        if self.line_time:
            warn.append("no timestamps: times are line numbers in microseconds; time-based rules mean little")
        return out + [f"vtrace: warning: {w}" for w in warn]

    # pass 2: events ----------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        s = self.stats
        vqs: dict[int, _Vq] = {}
        suspended: set[int] = set()
        recs: list[tuple] = []
        last_ts = 0
        objects = self.objects
        pid = self.pid

        def vq_state(obj: int) -> _Vq:
            v = vqs.get(obj)
            if v is None:
                d, i = self._vq_of[obj]
                v = vqs[obj] = _Vq(obj, d.ptr, i)
            return v

        def emit(ts, obj, kind, *, queue=NO_QUEUE, id=0, len=0, aux=0, aux2=0, arg=0):
            recs.append((ts, obj, arg, pid, id, len, aux, aux2, queue, int(kind), layer_of[obj]))

        layer_of = {o.obj: o.layer for o in objects}
        reset_of: dict[int, list[int]] = {}
        for obj, (d, _i) in self._vq_of.items():
            reset_of.setdefault(d.ptr, []).append(obj)

        for lineno, _tid, sec, frac, name, rest in _lines(self.path, s):
            keys = EVENTS.get(name)
            if keys is None:
                if name not in _CONTEXT:
                    s.ignored[name] = s.ignored.get(name, 0) + 1
                continue
            ts = _ts(sec, frac) if sec is not None else (lineno * 1000 if self.line_time else last_ts)
            if ts < last_ts:
                s.clamped += 1  # threads log in lock order; keep the file's order
                ts = last_ts
            last_ts = ts
            try:
                toks = (rest or "").split()
                args = toks[1::2]
                if tuple(toks[0::2]) != keys:  # vhost_vdpa_* write "key:"; anything else is damage
                    a = parse_args(rest or "")
                    args = [a[k] for k in keys]
                if name == "virtqueue_pop":
                    v = vq_state(_num(args[0]))
                    elem, n = _num(args[1]), int(args[2]) + int(args[3])
                    h = v.take(elem)
                    v.descs[elem] = n
                    v.pops = (v.pops + 1) & U16
                    emit(ts, v.obj, Kind.FETCH, queue=v.index, id=h, len=UNOBSERVED, aux=UNOBSERVED,
                         aux2=n, arg=v.pops)
                elif name == "virtqueue_fill":
                    v = vq_state(_num(args[0]))
                    elem = _num(args[1])
                    n = v.descs.get(elem, 0)
                    h, again = v.release(elem)
                    if again:
                        s.filled_again += 1
                    elif h is None:
                        s.unknown_elems += 1
                        h = v.fresh()  # a number no buffer ever had: never made available
                    v.pending += 1
                    emit(ts, v.obj, Kind.USED, queue=v.index, id=h, len=int(args[2]), aux2=n,
                         arg=(v.used + int(args[3]) + 1) & U16)
                elif name == "virtqueue_flush":
                    v = vq_state(_num(args[0]))
                    v.used = (v.used + int(args[1])) & U16
                    v.pending = 0
                elif name == "virtio_queue_notify":
                    v = vq_state(_num(args[2]))
                    emit(ts, v.obj, Kind.KICK, queue=v.index, arg=UNOBSERVED)
                elif name in ("virtio_notify", "virtio_notify_irqfd"):
                    v = vq_state(_num(args[1]))
                    emit(ts, v.obj, Kind.SIGNAL, queue=v.index, id=UNOBSERVED, len=UNOBSERVED,
                         aux=UNOBSERVED, aux2=UNOBSERVED, arg=v.used)
                elif name == "virtio_set_status":
                    d = _num(args[0])
                    if int(args[1]) == 0:  # virtio_set_status(vdev, 0) -> virtio_reset
                        self._reset(d, reset_of, vqs)
                        emit(ts, d or 1, Kind.RESET)
                else:
                    d = _num(args[0])
                    if name == "vhost_vdpa_suspend":
                        suspended.add(d)
                        emit(ts, d, Kind.SUSPEND)
                    elif name == "vhost_vdpa_dev_start":
                        if int(args[1]) and d in suspended:
                            suspended.discard(d)
                            emit(ts, d, Kind.RESUME)
                    elif name == "vhost_vdpa_reset_device":
                        suspended.discard(d)
                        self._reset(d, reset_of, vqs)
                        emit(ts, d, Kind.RESET)
                    elif name in ("vhost_vdpa_get_vring_base", "vhost_vdpa_set_vring_base"):
                        i = int(args[1])
                        emit(ts, _vdpa_queue(d, i),
                             Kind.VRING_BASE_GET if "get" in name else Kind.VRING_BASE_SET,
                             queue=i, id=int(args[2]) & U16)
            except (KeyError, ValueError, IndexError) as e:
                s.bad_line(lineno, f"{name}: {type(e).__name__} {e}")
                continue
            s.used_lines[name] = s.used_lines.get(name, 0) + 1
            if len(recs) >= BATCH:
                yield self._batch(recs, objects, last_ts)
                recs, objects = [], ()
        s.unflushed = sum(v.pending for v in vqs.values())
        if recs or objects:
            yield self._batch(recs, objects, last_ts)

    def _reset(self, dev: int, reset_of: dict[int, list[int]], vqs: dict[int, _Vq]) -> None:
        for obj in reset_of.get(dev, ()):
            v = vqs.get(obj)
            if v is not None:
                v.reset()

    def _batch(self, recs: list[tuple], objects, t_end: int) -> Batch:
        ev = np.array(recs, dtype=RECORD_DTYPE) if recs else np.zeros(0, dtype=RECORD_DTYPE)
        self.stats.events += ev.size
        return Batch(events=ev, t_end=t_end, objects=tuple(objects))
