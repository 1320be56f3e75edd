"""Chrome/Perfetto trace JSON: a track per queue, a flow from available to used.

Loads in ui.perfetto.dev and chrome://tracing. Each VM is a process, each
queue a thread; AVAIL/FETCH and USED are short slices joined by a flow
arrow, kicks and signals are instants, admin commands are slices on the
admin queue's track, in-flight buffers a counter.
"""

from __future__ import annotations

import json
from typing import IO

from vtrace import admin as admin_codes
from vtrace.events import NO_QUEUE, Kind, ObjectInfo

_INSTANT = {Kind.KICK: "kick", Kind.KICK_SUPPRESSED: "kick suppressed", Kind.SIGNAL: "signal",
            Kind.SIGNAL_SUPPRESSED: "signal suppressed", Kind.NOTIFY_ENABLE: "notify enable",
            Kind.NOTIFY_DISABLE: "notify disable", Kind.SUSPEND: "suspend", Kind.RESUME: "resume",
            Kind.RESET: "reset", Kind.QUEUE_RESET: "queue reset", Kind.VRING_ENABLE: "vring enable",
            Kind.SET_OWNER: "set owner", Kind.RELEASE: "release",
            Kind.VRING_BASE_GET: "get_vring_base", Kind.VRING_BASE_SET: "set_vring_base",
            Kind.KVM_IOEVENTFD: "ioeventfd", Kind.KVM_IRQFD: "irqfd", Kind.LOST: "events lost"}
_STARTS = (Kind.AVAIL, Kind.FETCH)


class PerfettoWriter:
    def __init__(self, out: IO[str]):
        self.out = out
        self.first = True
        self.pids: dict[str, int] = {}
        self.tids: dict[int, tuple[int, int]] = {}  # obj -> (pid, tid)
        self.info: dict[int, ObjectInfo] = {}
        self.open: dict[tuple[int, int], tuple[int, float]] = {}  # (obj, head) -> (flow id, ts)
        self.inflight: dict[int, int] = {}
        self.flow = 0
        self.t0: int | None = None
        out.write('{"displayTimeUnit":"ns","traceEvents":[\n')

    def _emit(self, d: dict) -> None:
        if not self.first:
            self.out.write(",\n")
        self.first = False
        self.out.write(json.dumps(d, separators=(",", ":")))

    def _track(self, obj: int) -> tuple[int, int]:
        t = self.tids.get(obj)
        if t is not None:
            return t
        info = self.info.get(obj)
        vm = info.vm if info else "unknown"
        if vm not in self.pids:
            self.pids[vm] = len(self.pids) + 1
            self._emit({"ph": "M", "name": "process_name", "pid": self.pids[vm], "args": {"name": vm}})
        pid = self.pids[vm]
        tid = len(self.tids) + 1
        if info is None:
            name = hex(obj)
        elif info.queue != NO_QUEUE:
            name = f"{info.device} {info.name or info.queue}"
        else:
            name = f"{info.device} {info.name}".strip()
        self._emit({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        self.tids[obj] = (pid, tid)
        return pid, tid

    def objects(self, objs) -> None:
        for o in objs:
            self.info[o.obj] = o

    def events(self, ev) -> None:
        cols = {n: ev[n].tolist() for n in ("ts", "obj", "id", "len", "arg", "aux2", "kind")}
        for i in range(ev.size):
            ts_ns = cols["ts"][i]
            if self.t0 is None:
                self.t0 = ts_ns
            ts = (ts_ns - self.t0) / 1000.0  # trace JSON wants microseconds
            obj, k, head = cols["obj"][i], cols["kind"][i], cols["id"][i]
            pid, tid = self._track(obj)
            if k in _STARTS:
                self.flow += 1
                self.open[(obj, head)] = (self.flow, ts)
                self._emit({"ph": "X", "name": f"avail {head}", "cat": "ring", "pid": pid, "tid": tid,
                            "ts": ts, "dur": 0.05, "args": {"head": head, "writable": cols["len"][i]}})
                self._emit({"ph": "s", "id": self.flow, "name": "buffer", "cat": "ring", "pid": pid,
                            "tid": tid, "ts": ts})
                self._count(obj, pid, ts, +1)
            elif k == Kind.USED:
                self._emit({"ph": "X", "name": f"used {head}", "cat": "ring", "pid": pid, "tid": tid,
                            "ts": ts, "dur": 0.05, "args": {"head": head, "len": cols["len"][i]}})
                o = self.open.pop((obj, head), None)
                if o is not None:
                    self._emit({"ph": "f", "bp": "e", "id": o[0], "name": "buffer", "cat": "ring",
                                "pid": pid, "tid": tid, "ts": ts})
                    self._count(obj, pid, ts, -1)
            elif k == Kind.ADMIN_COMPLETE:
                lat = cols["arg"][i] / 1000.0
                self._emit({"ph": "X", "name": admin_codes.opcode_name(head), "cat": "admin", "pid": pid,
                            "tid": tid, "ts": ts - lat, "dur": lat,
                            "args": {"status": admin_codes.status_name(cols["len"][i]),
                                     "qualifier": admin_codes.qualifier_name(cols["aux2"][i])}})
            elif k in _INSTANT:
                self._emit({"ph": "i", "s": "t", "name": _INSTANT[Kind(k)], "cat": "notify",
                            "pid": pid, "tid": tid, "ts": ts})

    def _count(self, obj: int, pid: int, ts: float, d: int) -> None:
        n = self.inflight.get(obj, 0) + d
        self.inflight[obj] = n
        info = self.info.get(obj)
        name = f"in flight {info.device} {info.name}" if info else f"in flight {obj:#x}"
        self._emit({"ph": "C", "name": name, "pid": pid, "ts": ts, "args": {"buffers": n}})

    def close(self) -> None:
        self.out.write("\n]}\n")


def write_perfetto(out: IO[str], batches) -> int:
    w = PerfettoWriter(out)
    n = 0
    for b in batches:
        w.objects(b.objects)
        w.events(b.events)
        n += b.events.size
    w.close()
    return n
