"""LiveSource: the probes in probes/*.bpf.c, loaded with bcc, as batches.

The loader (vtrace.live.loader) compiles and attaches the programs. Events
reach user space through one BPF ring buffer per program, written with
BPF_RB_NO_WAKEUP and drained on a timer a batch at a time
(vtrace.live.ringbuf), not one Python callback per record: a wakeup per
event slows the traced path (docs/live.md, OVERHEAD). A kernel without BPF
ring buffers (before 5.8) gets per-CPU perf buffers instead
(vtrace.live.transport, vtrace.live.perfbuf). What the programs could not
store, the runs the kernel skipped and what the rings report lost surface
as LOST records. In counting mode the hot kinds are summed in kernel maps
and read as deltas once per batch (vtrace.live.counts). Each batch carries
the identities of the objects it names for the first time
(vtrace.live.identity).

bcc is imported only when the programs are compiled (``start()``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Iterator

import numpy as np

from vtrace.events import RECORD_DTYPE, Batch, Kind, Layer, ProbeStatus
from vtrace.kernel import attach
from vtrace.kernel.symbols import Kallsyms, SymbolError
from vtrace.kvmexits import host_isa
from vtrace.live import transport
from vtrace.live.counts import CountReader, columns
from vtrace.live.identity import Identity
from vtrace.live.loader import Loader, LoadError
from vtrace.live.programs import PROGRAM_NAMES
from vtrace.stop import held


class LiveError(Exception):
    """Live tracing cannot start here (one line, with the fix)."""


class LiveSource:
    kind = "live"

    def __init__(self, *, realtime: bool = True, duration_ns: int | None = None, ring_pages: int | None = None,
                 drain_ms: int = 50, batch_ms: int = 200, programs: tuple[str, ...] = PROGRAM_NAMES,
                 stream: bool = True, loader: Loader | None = None):
        """``stream``: every record through the ring (capture, check). Otherwise
        the hot kinds are summed in kernel maps and read as deltas once per
        batch; only rare records take the (smaller) ring. ``loader``: programs
        already prepared (or stand-ins); by default this kernel's are prepared
        here and ``programs`` names them."""
        self.stream = stream
        if ring_pages is None:
            ring_pages = 256 if stream else 16
        self.duration_ns = duration_ns
        self.drain_s = drain_ms / 1000
        self.batch_ns = batch_ms * 1_000_000
        self.host = socket.gethostname()
        if loader is None:
            try:
                syms = Kallsyms()
                attach.allowed()
                attach.ensure_tracefs()  # tracepoints and kprobes need it; a point says so if it is still missing
                # the ring buffer, or per-CPU perf buffers where the kernel has none
                how, _why = transport.choose()
            except (SymbolError, ValueError) as e:
                raise LiveError(str(e)) from None
            loader = Loader(syms, how, ring_pages=ring_pages, stream=stream)
            loader.prepare(programs)
        self.loader = loader
        self.identity = Identity(self.host, loader.syms, loader.loaded)
        self.counter = CountReader()
        self._chunks: dict[str, list[np.ndarray]] = {}  # drained since the last batch, per program
        self._lost_seen: dict[str, int] = {}              # the lost total each program's last LOST record covered
        self._pending: Batch | None = None  # a batch built and not yet handed over
        self._tail: list[Batch] = []        # what the last read at the end found (final())
        self._missed_sent: tuple = ()       # the skipped-run counts the last probe table carried
        self._info = {"source": "live", "host": self.host, "kernel": os.uname().release, "simulated": False,
                      "ts_start": time.monotonic_ns(), "mode": "stream" if stream else "count",
                      "events": loader.transport,
                      # which table names kvm_exit's codes (vtrace/kvmexits.py): the traced host's
                      # KVM vendor, kept in a capture's header so a replay names them alike
                      "kvm_isa": host_isa()}

    @property
    def info(self) -> dict:
        return self._info

    # the loader's side ----------------------------------------------------------------
    def start(self) -> None:
        """Compile and attach every prepared program (needs root and bcc)."""
        try:
            self.loader.start()
        except LoadError as e:
            raise LiveError(str(e)) from None

    def ebpf(self) -> str:
        """What would be loaded: each program with its -D macros written out (--ebpf)."""
        return self.loader.ebpf()

    def probes(self) -> tuple[ProbeStatus, ...]:
        """Each point's status, an attached one with its skipped runs as last read."""
        return self.loader.probes()

    def prog_stats(self) -> list[tuple[str, str, int, int]]:
        """(layer, point, run_cnt, run_time_ns) per attached point (kernel.bpf_stats_enabled)."""
        return self.loader.prog_stats()

    def bpf(self, program: str):
        """A started program's bcc BPF object (its maps by name), or None."""
        return self.loader.bpf(program)

    # the Source protocol ------------------------------------------------------------
    def align(self, interval_ns: int) -> None:
        """Read at least once per reporting interval, on a period that divides it,
        so kernel-side counts fall in the interval they belong to."""
        k = max(1, -(-interval_ns // self.batch_ns))
        self.batch_ns = max(interval_ns // k, 1_000_000)
        self.drain_s = min(self.drain_s, self.batch_ns / 1e9)

    def damage(self) -> str | None:
        """Nothing is read from a file: what the kernel could not deliver is in LOST records."""
        return None

    def close(self) -> None:
        """Detach every probe and free the programs (safe to call again)."""
        self.loader.close()

    def final(self) -> list[Batch]:
        """What batches() read when it ended, after its last batch (handed over once)."""
        tail, self._tail = self._tail, []
        return tail

    def batches(self) -> Iterator[Batch]:
        if not any(p.bpf for p in self.loader.programs):
            self.start()
        t0 = time.monotonic_ns()
        first = True
        next_batch = t0 + self.batch_ns
        try:
            while True:
                time.sleep(self.drain_s)
                with held():  # a read's records are only ours once in self._chunks
                    self._drain()
                now = time.monotonic_ns()
                end = self.duration_ns is not None and now - t0 >= self.duration_ns
                if now < next_batch and not end:
                    continue
                next_batch = max(next_batch + self.batch_ns, now)  # no drift: reads stay on the period
                # Ctrl-C/SIGTERM are held from the read until the consumer has
                # written and fed the batch (vtrace/stop.py): a stop landing in
                # between would lose a whole batch.
                with held():
                    self._pending = self._collect(now, first)
                    batch, self._pending = self._pending, None
                    yield batch
                first = False
                if end:
                    return
        finally:
            # Ctrl-C, SIGTERM or the consumer stopping: what the rings and maps
            # still hold since the last batch is read before the probes go
            # (final() hands it over), so a stop loses nothing.
            try:
                with held(deliver=False):  # a second Ctrl-C must not lose the tail
                    self._tail = [self._pending] if self._pending is not None else []  # built, never handed over
                    tail = self._collect(time.monotonic_ns(), first and self._pending is None)
                    if tail.events.size or tail.counts is not None:
                        self._tail.append(tail)
            finally:
                self.close()

    # reading ------------------------------------------------------------------------
    def _drain(self) -> None:
        for prog in self.loader.programs:
            if prog.ring is not None:
                ev = prog.ring.read()
                if ev.size:
                    self._chunks.setdefault(prog.name, []).append(ev)

    def _lost(self, now: int) -> list[np.ndarray]:
        """A LOST record per program whose lost total grew since its last one."""
        out = []
        for prog in self.loader.programs:
            if prog.bpf is None:
                continue
            total = self.loader.lost(prog)
            seen = self._lost_seen.get(prog.name, 0)
            if total > seen:
                rec = np.zeros(1, dtype=RECORD_DTYPE)
                rec["ts"], rec["kind"], rec["layer"] = now, Kind.LOST, Layer.VTRACE
                rec["arg"], rec["queue"] = total - seen, 0xFFFF
                out.append(rec)
                self._lost_seen[prog.name] = total
        return out

    def _collect(self, now: int, first: bool) -> Batch:
        """Everything drained since the last batch, the kernel counts' deltas and lost records."""
        self._drain()
        kc = None if self.stream else self.counter.read(self.loader.loaded())
        parts = [c for prog in self.loader.programs for c in self._chunks.get(prog.name, ())] + self._lost(now)
        ev = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
        if ev.size > 1:
            ev = ev[np.argsort(ev["ts"], kind="stable")]  # several rings, several CPUs
        self.identity.new_lives(ev["obj"], ev["layer"], ev["pid"], ev["kind"], ev["ts"])
        obj, layer, pid, kind = ev["obj"], ev["layer"], ev["pid"], ev["kind"]
        if kc is not None:  # counted since the last read: the current life's
            for a in (kc.counts, kc.latency, kc.flight):
                self.identity.current_ids(a["obj"])
            cols = columns(kc)
            obj, layer, pid, kind = (np.concatenate((a, b)) for a, b in zip((obj, layer, pid, kind), cols))
        objects = tuple(self.identity.objects(obj, layer, pid, kind))
        self.identity.let_go(ev["obj"], ev["layer"], ev["kind"])  # named above: the kernel's rows may go
        # the probe table goes with the first batch, and again whenever a point's
        # skipped runs grew (read by _lost above)
        missed = tuple(sorted(self.loader.missed.items()))
        fresh = first or missed != self._missed_sent
        self._missed_sent = missed
        batch = Batch(events=ev, t_end=max(now, int(ev["ts"][-1]) if ev.size else 0), objects=objects,
                      probes=self.probes() if fresh else None, counts=kc)
        self._chunks.clear()
        return batch
