"""Sources: where events come from (live BPF, a replayed file, the simulator).

``open_source(spec)`` understands ``sim``, ``sim:k=v,...``, ``replay:FILE``,
``qemu:LOG`` (a QEMU trace log), ``live`` and ``auto`` (live when it can run here, else the simulator).
Outputs never import this package; the CLI wires sources to outputs.
"""

from __future__ import annotations


class SourceError(Exception):
    """A source that cannot be opened; the message is one line."""


def live_available() -> tuple[bool, str]:
    """Whether ``--source live`` can run here, and if not the first reason (one line)."""
    import importlib.util
    import os
    if os.geteuid() != 0:
        return False, "live tracing needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); see vtrace doctor"
    if importlib.util.find_spec("bcc") is None:
        return False, "bcc is not importable (apt-get install python3-bpfcc); see vtrace doctor"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False, "the kernel has no BTF (/sys/kernel/btf/vmlinux); see vtrace doctor"
    from vtrace.kernel import attach
    root, why = attach.ensure_tracefs()  # mounts it when nothing has (root only)
    if root is None:
        return False, f"{why}; see vtrace doctor"
    return True, ""


def open_source(spec: str, *, realtime: bool = True, duration_ns: int | None = None, stream: bool = True):
    """Returns (source, notice). ``notice`` is a line for stderr or None.

    ``stream=False`` lets a live source sum hot events in the kernel (stat,
    the exporter, top); capture and check need every event (the default)."""
    notice = None
    if spec == "auto":
        ok, why = live_available()
        if ok:
            spec = "live"
        else:
            notice = f"live tracing unavailable ({why.split(';')[0]}); using the simulated host (--source sim)"
            spec = "sim"
    name, _, arg = spec.partition(":")
    if name == "sim":
        from vtrace.sources.sim import SimConfig, SimSource
        try:
            cfg = SimConfig.parse(arg)
        except ValueError as e:
            raise SourceError(str(e)) from None
        return SimSource(cfg, realtime=realtime, duration_ns=duration_ns), notice
    if name == "replay":
        if not arg:
            raise SourceError("--source replay needs a file: replay:FILE")
        from vtrace.capture import CaptureError
        from vtrace.sources.replay import ReplaySource
        try:
            return ReplaySource(arg), notice
        except CaptureError as e:
            raise SourceError(str(e)) from None
    if name == "qemu":
        if not arg:
            raise SourceError("--source qemu needs a QEMU trace log: qemu:FILE")
        from vtrace.sources.qemulog import QemuLogError, QemuLogSource
        try:
            return QemuLogSource(arg), notice
        except QemuLogError as e:
            raise SourceError(str(e)) from None
    if name == "live":
        # live:PROGRAM,...: only those programs (probes/<name>.bpf.c), e.g. live:vhost,kvm on a host
        from vtrace.live.programs import PROGRAM_NAMES
        programs = tuple(p for p in arg.split(",") if p) or PROGRAM_NAMES
        unknown = [p for p in programs if p not in PROGRAM_NAMES]
        if unknown:
            raise SourceError(f"--source live: unknown program {', '.join(unknown)} "
                              f"(live:PROGRAM,... of {', '.join(PROGRAM_NAMES)})")
        ok, why = live_available()
        if not ok:
            raise SourceError(f"--source live: {why}; or use --source sim")
        from vtrace.live.source import LiveError, LiveSource
        try:
            src = LiveSource(realtime=realtime, duration_ns=duration_ns, stream=stream,
                             programs=tuple(p for p in PROGRAM_NAMES if p in programs))
            src.start()
        except LiveError as e:
            raise SourceError(f"--source live: {e}") from None
        return src, notice
    raise SourceError(f"unknown source {spec!r} (auto, live[:PROGRAM,...], sim[:k=v,...], replay:FILE, qemu:LOG)")
