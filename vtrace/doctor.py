"""vtrace doctor: can live tracing run here, and if not, exactly what to do.

Each check is (name, ok, detail, fix); ``lines()`` renders them for the
terminal (the probe-point table after them is vtrace/probetable.py).
Checks that need bcc import it inside the check, never at module import.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

CAPS = {21: "CAP_SYS_ADMIN", 38: "CAP_PERFMON", 39: "CAP_BPF"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check narrows what attaches, it does not stop live


def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("CapEff:"):
                    return int(ln.split()[1], 16)
    except OSError:
        pass
    return 0


def _config() -> dict[str, str]:
    from vtrace.kernel import headers
    try:
        text = headers.kernel_config()
    except (headers.HeaderError, OSError):
        return {}
    return dict(ln.split("=", 1) for ln in text.splitlines() if ln.startswith("CONFIG_") and "=" in ln)


def privileges() -> Check:
    eff = _cap_eff()
    missing = [n for b, n in CAPS.items() if not eff >> b & 1]
    if not missing:
        return Check("privileges", True, "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN are effective")
    return Check("privileges", False, f"missing {', '.join(missing)}",
                 "run as root (sudo vtrace ...) or grant the capabilities: "
                 "setcap cap_bpf,cap_perfmon,cap_sys_admin+ep on the Python interpreter")


def bcc_importable() -> Check:
    if importlib.util.find_spec("bcc") is None:
        return Check("bcc", False, "the bcc Python module is not importable",
                     "apt-get install python3-bpfcc libbpfcc (make setup exposes it to the venv)")
    try:
        from bcc import libbcc
        libbcc.lib  # loads libbcc.so
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        return Check("bcc", False, f"bcc imports but libbcc fails to load: {e}", "apt-get install libbpfcc")
    import bcc
    return Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} ({os.path.dirname(bcc.__file__)})")


def kernel_headers() -> Check:
    from vtrace.kernel import headers
    if headers.kernel_has_headers():
        return Check("headers", True, f"/lib/modules/{os.uname().release}/build")
    try:
        path = headers.tree()
    except (headers.HeaderError, OSError) as e:
        return Check("headers", False, f"no kernel headers and no minimal tree: {e}",
                     "apt-get install linux-libc-dev, and provide the kernel's config as /proc/config.gz "
                     "(CONFIG_IKCONFIG_PROC, or modprobe configs) or /boot/config-$(uname -r)")
    return Check("headers", True, f"no kernel headers; minimal tree {path} (BCC_KERNEL_SOURCE)")


def btf_present() -> Check:
    from vtrace.kernel import btf
    try:
        b = btf.load()
        btf.struct_layout("virtqueue")
    except btf.BtfError as e:
        return Check("btf", False, str(e), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    return Check("btf", True, f"/sys/kernel/btf/vmlinux, {b.next_id - 1:,} types")


def tracefs_mounted() -> Check:
    from vtrace.kernel import attach
    root, why = attach.ensure_tracefs()  # as every live command does: mounted when missing (root)
    if root is None:
        return Check("tracefs", False, why, "mount -t tracefs nodev /sys/kernel/tracing")
    return Check("tracefs", True, root + (" (vtrace mounted it: it was not mounted)" if root in attach.mounted_here else ""))


def kprobes() -> Check:
    cfg = _config()
    from vtrace.kernel import attach
    root = attach.tracefs()
    if cfg and cfg.get("CONFIG_KPROBES") != "y":
        return Check("kprobes", False, "CONFIG_KPROBES is off in this kernel",
                     "none here: vhost/vfio function probes need a kernel with kprobes (see docs/doctor.md)", False)
    if root and not os.path.exists(os.path.join(root, "kprobe_events")):
        return Check("kprobes", False, "no kprobe_events in tracefs", "a kernel with CONFIG_KPROBES=y", False)
    return Check("kprobes", True, "kprobes are available", required=False)


def fentry() -> Check:
    """Load and attach one fentry program (vtrace's own loader, vtrace/kernel/fentry.py):
    some kernels refuse them with EPERM even for root."""
    from vtrace.kernel import fentry as fe
    ok, why = fe.available()
    if not ok:
        if "EPERM" in why:
            why += "; bcc's 'Need super-user privileges' is misleading here"
        return Check("fentry", False, why, "none needed: vtrace falls back to kprobes or tracepoints", False)
    return Check("fentry", True, "fentry/fexit programs load and attach (module functions too)", required=False)


def tp_btf() -> Check:
    """Load and attach one BTF-typed raw tracepoint program (vtrace/kernel/fentry.py):
    the guest points' cheaper way in, and one that needs no tracefs."""
    from vtrace.kernel import fentry as fe
    ok, why = fe.tp_btf_available()
    if not ok:
        return Check("tp_btf", False, why, "none needed: vtrace falls back to raw tracepoints", False)
    cast = fe.kfunc_id("bpf_rdonly_cast") is not None
    return Check("tp_btf", True, "BTF-typed raw tracepoints load and attach"
                 + (" (with bpf_rdonly_cast)" if cast else ""), required=False)


def skipped_runs() -> Check:
    """Which runs the kernel skips without counting them, per attach strategy
    vtrace may use here (vtrace/kernel/misses.py): what `lost` cannot include."""
    from vtrace.kernel import attach, misses
    version = misses.kernel_version()
    try:
        kinds = attach.allowed()
    except ValueError as e:
        return Check("misses", False, str(e), "unset VTRACE_STRATEGIES or name known kinds", False)
    if not kprobes().ok:
        kinds = tuple(k for k in kinds if k != "kprobe")
    blind = {k: misses.uncounted(k, version, kprobe_link=True) for k in kinds}
    blind = {k: why for k, why in blind.items() if why}
    if not blind:
        return Check("misses", True, "every probe run the kernel skips is counted (lost)", required=False)
    return Check("misses", False, "; ".join(f"{k}: {why}" for k, why in blind.items()),
                 "none needed to trace; a newer kernel counts them (vtrace probes marks each point '+?')", False)


def events_transport() -> Check:
    """Which way records reach vtrace (vtrace/live/transport.py): the BPF ring
    buffer, or per-CPU perf buffers on kernels before 5.8."""
    from vtrace.live import transport
    try:
        how, why = transport.choose()
    except ValueError as e:
        return Check("events", False, str(e), "unset VTRACE_EVENTS, or set it to ringbuf or perf")
    if how == "ringbuf":
        return Check("events", True, "BPF ring buffer" + (" (VTRACE_EVENTS)" if why else ""), required=False)
    return Check("events", True, f"perf buffers ({why}): read through bcc, one callback per record", required=False)


def run_all() -> list[Check]:
    checks = [privileges(), bcc_importable(), btf_present(), tracefs_mounted()]
    if checks[0].ok and checks[1].ok:
        checks += [kernel_headers(), kprobes(), fentry(), tp_btf(), skipped_runs(), events_transport()]
    else:
        checks += [kprobes()]
    return checks


def passed(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def lines(checks: list[Check]) -> list[str]:
    """The checks as `vtrace doctor` prints them: a mark, the name, what was
    found; a failed check adds its fix."""
    out = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
        out.append(f"{mark} {c.name:<10} {c.detail}")
        if not c.ok and c.fix:
            out.append(f"     {'':<10} fix: {c.fix}")
    return out
