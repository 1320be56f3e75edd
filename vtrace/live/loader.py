"""Compile, attach and detach the probe programs, and read their BPF statistics.

Per program: choose each point's strategy (vtrace.kernel.attach), read the
struct offsets it needs from BTF (vtrace.kernel.btf) and pass them as -D
macros, point bcc at a minimal header tree when the kernel has none
(vtrace.kernel.headers), compile, attach. A program or point that fails is
reported (``Loader.probes()``) and the rest run. fentry/fexit and tp_btf
programs are loaded by vtrace itself (vtrace.kernel.fentry), kprobes linked
by vtrace itself (vtrace.kernel.kprobe); bcc only compiles, and attaches
tracepoints. Skipped runs and run counts are read per point
(vtrace.kernel.misses).

bcc is imported only when a program is compiled.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field, replace

from vtrace.events import ProbeStatus
from vtrace.kernel import attach, btf, fentry, headers, kprobe, misses
from vtrace.kernel.bccerr import captured_stderr, reason
from vtrace.kernel.symbols import SymbolError
from vtrace.live.perfbuf import PerfReader
from vtrace.live.programs import (PROBES_DIR, PROGRAMS, Point, btf_module, have_macro, point_functions,
                                  points_of, program_text)
from vtrace.live.ringbuf import RingReader


class LoadError(Exception):
    """Nothing could be loaded here (one line, with the fix)."""


@dataclass
class Program:
    """One probes/<name>.bpf.c as prepared (cflags, chosen strategies) and, once started, loaded."""
    name: str
    text: str
    cflags: list[str]
    points: list[Point]
    chosen: list = field(default_factory=list)  # (Point, Strategy) to attach
    # fentry points: {point: [(how, program function, kernel function, (BTF id, BTF object fd))]}
    fentry: dict = field(default_factory=dict)
    fds: dict = field(default_factory=dict)     # (program function, kernel function) -> (prog fd, link fd)
    # kprobe points: (program function, kernel function, kprobe|kretprobe) -> kprobe.Kprobe
    kprobes: dict = field(default_factory=dict)
    bpf: object = None    # bcc's BPF object once compiled
    ring: RingReader | PerfReader | None = None


def attach_point(prog: Program, p: Point, s: attach.Strategy, syms) -> None:
    """Attach one point of a compiled program. Tracepoint programs bcc attached when it loaded them."""
    if s.kind in attach.BTF_KINDS:
        # bcc compiled it; vtrace loads it against the function's (tracepoint's) BTF
        # (vtrace/kernel/fentry.py); returns before entries, as for kprobes below
        kfunc = {fentry.RDONLY_CAST_MARK: fentry.kfunc_id("bpf_rdonly_cast")}
        for how, fn, target, (tid, obj) in sorted(prog.fentry[p.name], key=lambda t: t[0] != "fexit"):
            insns = prog.bpf.dump_func(fn.encode())
            if how == "tp_btf" and kfunc[fentry.RDONLY_CAST_MARK] is not None:
                insns = fentry.patch_kfuncs(insns, kfunc)
            fd = fentry.load(insns, how, tid, obj, fn)
            try:
                prog.fds[(fn, target)] = (fd, fentry.attach(fd))
            except fentry.FentryError:
                os.close(fd)
                raise
        return
    if s.kind != "kprobe":
        return
    # the symbol itself, or its compiler clone (.isra, .constprop)
    sym = syms.lookup(s.target)[0].name
    targets = [(ptype, sym, fn) for ptype, fn in s.attach]
    for ptype, target, fn in p.extra:
        found = syms.lookup(target)
        if found:
            targets.append((ptype, found[0].name, fn))
    # Every return probe before any entry probe: a call that entered after its
    # entry probe but before its return probe would leave its saved state
    # behind, and the thread's next call would be paired with it (an avail
    # lost, a false used-twice in the checker). A return with no saved entry is
    # ignored. Through a BPF link of vtrace's own, not bcc's attach_kprobe: only
    # a link reports the kprobe's misses (vtrace/kernel/kprobe.py).
    from bcc import BPF  # noqa: deferred: only the live source needs bcc
    for ptype, target, fn in sorted(targets, key=lambda t: t[0] != "kretprobe"):
        prog_fd = prog.bpf.load_func(fn.encode(), BPF.KPROBE).fd
        prog.kprobes[(fn, target, ptype)] = kprobe.attach(prog_fd, target, ptype == "kretprobe")


def detach_kprobes(prog: Program, p: Point | None = None, s: attach.Strategy | None = None) -> None:
    """Close a point's (or every) kprobe: its link and perf event."""
    names = point_functions(p, s) if p is not None else None
    for key in [k for k in prog.kprobes if names is None or k[0] in names]:
        prog.kprobes.pop(key).close()


def detach_fentry(prog: Program, p: Point | None = None) -> None:
    """Close a point's (or every) fentry/fexit link and program: that detaches them."""
    keys = [(t[1], t[2]) for t in prog.fentry.get(p.name, ())] if p is not None else list(prog.fds)
    for key in keys:
        for fd in reversed(prog.fds.pop(key, ())):
            os.close(fd)


def prog_fds(prog: Program) -> list[tuple[str, int]]:
    """(program function, fd) of every loaded program: bcc's, and vtrace's own
    fentry/fexit ones (one per kernel function)."""
    return [(k.decode(), fn.fd) for k, fn in prog.bpf.funcs.items()] + \
        [(fn, pfd) for (fn, _target), (pfd, _link) in prog.fds.items()]


class Loader:
    """The programs of one live source: prepared, started, read for statistics, closed.

    ``syms`` is the kernel's symbol table (vtrace.kernel.symbols.Kallsyms),
    ``transport`` "ringbuf" or "perf" (vtrace.live.transport). ``programs``
    are already prepared ones (tests); ``prepare`` adds more."""

    def __init__(self, syms, transport: str = "ringbuf", *, ring_pages: int = 256, stream: bool = True,
                 programs: list[Program] | tuple[Program, ...] = ()):
        self.syms = syms
        self.transport = transport
        self.ring_pages = ring_pages
        self.stream = stream
        self.programs: list[Program] = list(programs)
        self.status: list[ProbeStatus] = []
        self.demoted: dict[str, str] = {}    # points fentry or tp_btf was refused for at attach: why
        self.partial: dict[str, str] = {}    # fentry points attached without one of their extra functions
        self.without: dict[str, str] = {}    # points attached without their optional part
        # skipped runs the kernel counted, per attached point (read with each batch and at close),
        # and what it skips uncounted for each (vtrace/kernel/misses.py)
        self.missed: dict[str, int] = {}
        self.uncounted: dict[str, str] = {}

    def loaded(self) -> list[tuple[str, object]]:
        """(program name, bcc BPF object) of every compiled program, in order."""
        return [(prog.name, prog.bpf) for prog in self.programs if prog.bpf is not None]

    def bpf(self, name: str):
        """The compiled program ``name`` (bcc's BPF object: its maps by name), or None."""
        return next((prog.bpf for prog in self.programs if prog.name == name), None)

    # building ---------------------------------------------------------------------
    def prepare(self, names) -> None:
        """Choose strategies and build cflags for each program in ``names``; a program
        with no point to attach is left out (its points' status says why)."""
        for name in names:
            prog = self._prepare(name)
            if prog is not None:
                self.programs.append(prog)

    def _prepare(self, name: str) -> Program | None:
        points = points_of(name)
        chosen = []
        fentry_fns: dict[str, list] = {}
        cflags = [f"-I{PROBES_DIR}", f"-DVTRACE_RB_PAGES={self.ring_pages}"]
        if self.transport == "perf":
            cflags.append("-DVTRACE_PERFBUF")
        if not self.stream:
            cflags.append("-DVTRACE_AGG")
        for p in points:
            s, why = attach.choose(p.strategies, self.syms, skip=attach.BTF_KINDS if p.name in self.demoted else ())
            if s is None:
                if p.name in self.demoted:
                    why = f"{self.demoted[p.name]}; {why}"
                self.status.append(ProbeStatus(p.layer, p.name, "-", False, why))
                continue
            try:
                for macro, off in btf.offsets(p.offsets, p.btf or btf_module(name)).items():
                    cflags.append(f"-D{macro}={off}")
            except btf.BtfError as e:
                self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                continue
            cflags += self._optional_part(p)
            if s.kind == "fentry":
                try:
                    fentry_fns[p.name], nargs = self.fentry_targets(p, s)
                except (fentry.FentryError, btf.BtfError) as e:
                    self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                    continue
                # the argument count: where fexit finds the return value (probes/vtrace_fn.h)
                cflags.append(f"-DFENTRY_{p.name}={nargs}")
            if s.kind == "tp_btf":
                try:
                    fentry_fns[p.name] = [(how, fn, s.target, (fentry.tp_target(s.target), 0)) for how, fn in s.attach]
                except (fentry.FentryError, btf.BtfError) as e:
                    self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, str(e)))
                    continue
                cflags.append(f"-DTP_BTF_{s.target}=1")  # its arguments are typed: plain loads (probes/vtrace_tp.h)
            chosen.append((p, s))
        if not chosen:
            return None
        if any(s.kind == "tp_btf" for _p, s in chosen):
            cflags += self._typed_casts(name)
        spec = PROGRAMS[name]
        try:
            for macro, off in btf.offsets(spec.offsets, btf_module(name)).items():
                cflags.append(f"-D{macro}={off}")
            for macro, (sname, path) in spec.layout_offsets.items():
                try:
                    cflags.append(f"-D{macro}={btf.member(sname, path, btf_module(name)).offset}")
                except btf.BtfError:
                    pass  # the other layout: the program knows it
            for p, s in chosen:
                for sym in s.needs:
                    cflags.append(f"-D{sym.upper()}={self.syms.address(sym):#x}ULL")
                cflags.append(f"-DHAVE_{have_macro(p, s)}")
        except (btf.BtfError, SymbolError) as e:
            for p, s in chosen:
                self.status.append(ProbeStatus(p.layer, p.name, s.kind, False, str(e)))
            return None
        return Program(name, program_text(name), cflags, [p for p, _ in chosen], chosen, fentry_fns)

    def _typed_casts(self, name: str) -> list[str]:
        """-D macros that let a tp_btf program read its casts' structs as typed
        pointers (bpf_rdonly_cast, Linux 6.2+), where the kernel has the kfunc and
        vmlinux's BTF has the struct (the kfunc names types of vmlinux only): the
        program then loads their fields directly instead of through
        bpf_probe_read_kernel."""
        if fentry.kfunc_id("bpf_rdonly_cast") is None:
            return []
        try:
            b = btf.load(None)
        except btf.BtfError:
            return []
        flags = [f"-D{macro}={tid}" for macro, sname in PROGRAMS[name].casts.items()
                 if (tid := b.find(btf.STRUCT, sname)) is not None]
        return flags + [f"-DRDONLY_CAST_MARK={fentry.RDONLY_CAST_MARK:#x}"] if flags else []

    def _optional_part(self, p: Point) -> list[str]:
        """-D macros for the point's optional part, or none (noted in self.without)."""
        self.without.pop(p.name, None)
        part = p.optional
        if part is None:
            return []
        if not all(self.syms.lookup(n) for n in part.symbols):
            return []  # not in this kernel (virtio-mmio only, virtio_pci not loaded): nothing missed
        try:
            flags = [f"-D{n.upper()}={self.syms.address(n):#x}ULL" for n in part.symbols]
            mod = part.module if os.path.exists(os.path.join(btf.BTF_DIR, part.module)) else None
            flags += [f"-D{m}={off}" for m, off in btf.offsets(part.offsets, mod).items()]
        except (SymbolError, btf.BtfError) as e:
            self.without[p.name] = f"without {part.what} ({e})"
            return []
        return flags

    def fentry_targets(self, p: Point, s: attach.Strategy) -> tuple[list[tuple[str, str, str, tuple]], int]:
        """[(how, program function, kernel function, (BTF id, BTF object fd))] for each
        function a fentry point attaches, and the main function's argument count. An
        extra function fentry cannot take is left out and named in ``partial``."""
        tid, obj, nargs = attach.fentry_target(s, self.syms)
        out = [(how, fn, s.target, (tid, obj)) for how, fn in s.attach]
        missed = {}
        for how, target, fn in p.extra:
            if self.syms.lookup(target):  # absent from this kernel: nothing to miss
                try:
                    tid, obj, _n = attach.fentry_target(attach.Strategy("fentry", target), self.syms)
                except (fentry.FentryError, btf.BtfError) as e:
                    missed[target] = str(e)  # the point's main function still attaches: say what it lacks
                    continue
                out.append(("fentry" if how == "kprobe" else "fexit", fn, target, (tid, obj)))
        if missed:
            self.partial[p.name] = "without " + "; ".join(f"{t} ({why})" for t, why in missed.items())
        else:
            self.partial.pop(p.name, None)
        return out, nargs

    def ebpf(self) -> str:
        """What would be loaded: each program with its -D macros written out (--ebpf)."""
        out = []
        for prog in self.programs:
            defs = []
            for fl in prog.cflags:
                if fl.startswith("-D"):
                    k, _, v = fl[2:].partition("=")
                    defs.append(f"#define {k} {v or 1}")
            out.append(f"/* ==== probes/{prog.name}.bpf.c (include path: {PROBES_DIR}) ==== */\n"
                       + "\n".join(defs) + "\n" + prog.text)
        return "\n".join(out)

    # loading ----------------------------------------------------------------------
    def start(self) -> None:
        """Compile and attach every prepared program (needs root and bcc)."""
        try:
            os.environ.update(headers.bcc_env())
        except (headers.HeaderError, OSError) as e:
            raise LoadError(f"no kernel headers for bcc: {e}") from None
        for i, prog in enumerate(self.programs):
            refused = self._start(prog)
            # A function fentry could not take (x86 trampolines before Linux 6.6
            # take at most 6 arguments: vhost_get_vq_desc has 7) falls to its
            # next strategy: the program is built again without it.
            if refused:
                self.demoted.update({p.name: why for p, why in refused.items()})
                self.close_program(prog)
                names = {p.name for p in points_of(prog.name)}
                self.status = [st for st in self.status if st.point not in names]
                again = self._prepare(prog.name)
                if again is not None:
                    self.programs[i] = again
                    self._start(again)
        if not any(p.bpf for p in self.programs):
            self.close()
            reasons = "; ".join(f"{s.point}: {s.error}" for s in self.status if not s.attached)
            raise LoadError(f"no probe attached ({reasons or 'nothing to attach on this kernel'})")

    def _start(self, prog: Program) -> dict:
        """Compile one program and attach its points; returns {point: why} of
        the fentry points the kernel refused."""
        from bcc import BPF  # noqa: deferred: only the live source needs bcc
        refused = {}
        try:
            with captured_stderr() as log:
                prog.bpf = BPF(text=prog.text.encode(), cflags=prog.cflags)
            if self.transport == "perf":  # ring_pages per CPU: as much room per CPU as the ring has in all
                prog.ring = PerfReader(prog.bpf, self.ring_pages)
            else:
                prog.ring = RingReader(prog.bpf[b"events"].map_fd, self.ring_pages * mmap.PAGESIZE)
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
            msg = reason(log[0] if log else "", e)
            for p, s in prog.chosen:
                self.status.append(ProbeStatus(p.layer, p.name, f"{s.kind}:{s.target}", False, msg))
            prog.bpf = None
            return refused
        for p, s in prog.chosen:
            label = f"{s.kind}:{s.target}"
            log = []
            try:
                with captured_stderr() as log:
                    attach_point(prog, p, s, self.syms)
                if s.kind == "kprobe":
                    label = f"kprobe:{self.syms.lookup(s.target)[0].name}"
                notes = [self.demoted.get(p.name, ""),
                         self.partial.get(p.name, "") if s.kind == "fentry" else "", self.without.get(p.name, "")]
                note = "; ".join(n for n in notes if n)
                self.status.append(ProbeStatus(p.layer, p.name, label, True, note))
                links = [kp.missed() is not None
                         for (fn, _t, _h), kp in prog.kprobes.items() if fn in point_functions(p, s)]
                self.uncounted[p.name] = misses.uncounted(s.kind, misses.kernel_version(), bool(links) and all(links))
            except fentry.FentryError as e:
                detach_fentry(prog, p)
                refused[p] = f"{s.kind} refused: {reason(e.log, e)}"
                self.status.append(ProbeStatus(p.layer, p.name, label, False, refused[p]))
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                detach_kprobes(prog, p, s)
                self.status.append(ProbeStatus(p.layer, p.name, label, False, reason(log[0] if log else "", e)))
        return refused

    # statistics -------------------------------------------------------------------
    def probes(self) -> tuple[ProbeStatus, ...]:
        """Each point's status, an attached one with its skipped runs as last read."""
        return tuple(replace(st, missed=self.missed.get(st.point, 0), uncounted=self.uncounted.get(st.point, ""))
                     if st.attached else st for st in self.status)

    def read_missed(self, prog: Program) -> None:
        """Each attached point's skipped runs, as the kernel counts them now: its
        programs' recursion_misses and its kprobes' own misses."""
        if prog.bpf is None:
            return
        fds = prog_fds(prog)
        for p, s in prog.chosen:
            names = point_functions(p, s)
            n = misses.recursion_misses(fd for name, fd in fds if name in names)
            n += sum(kp.missed() or 0 for (fn, _t, _h), kp in prog.kprobes.items() if fn in names)
            self.missed[p.name] = n

    def lost(self, prog: Program) -> int:
        """Everything a compiled program lost since it was loaded: what it could not
        store (its `lost` array), the runs the kernel skipped and counted, per point
        (read_missed), and what its ring reports (perf buffers: their own drops;
        records that came unusable)."""
        total = sum(int(x) for x in prog.bpf[b"lost"].getvalue(0))
        self.read_missed(prog)
        total += sum(self.missed.get(p.name, 0) for p, _s in prog.chosen)
        if prog.ring is not None:
            total += prog.ring.lost + prog.ring.unread
        return total

    def prog_stats(self) -> list[tuple[str, str, int, int]]:
        """(layer, point, run_cnt, run_time_ns) per attached point, from each program's
        fdinfo. The kernel counts only while kernel.bpf_stats_enabled is 1."""
        out = []
        for prog in self.programs:
            if prog.bpf is None:
                continue
            fds = prog_fds(prog)
            for p, s in prog.chosen:
                names = point_functions(p, s)
                cnt = ns = 0
                for name, fd in fds:
                    if name not in names:
                        continue
                    info = misses.fdinfo(fd)
                    cnt += info.get("run_cnt", 0)
                    ns += info.get("run_time_ns", 0)
                out.append((p.layer, p.name, cnt, ns))
        return out

    # closing ----------------------------------------------------------------------
    def close(self) -> None:
        for prog in self.programs:
            self.close_program(prog)

    def close_program(self, prog: Program) -> None:
        if prog.ring is not None:
            prog.ring.close()
            prog.ring = None
        self.read_missed(prog)  # the last count, for probes() after the close
        detach_kprobes(prog)
        detach_fentry(prog)
        if prog.bpf is not None:
            try:
                prog.bpf.cleanup()
            except Exception:  # noqa: BLE001 - detaching is best effort at exit
                pass
            prog.bpf = None
