"""Attach mechanics: which strategies this kernel allows for a probe point, and tracefs.

A point (vtrace.live.programs) lists its strategies cheapest first
(fentry/fexit, kprobe, BTF-typed raw tracepoint (tp_btf), tracepoint, raw
tracepoint); ``choose`` returns the first this kernel allows, or None with
every reason. VTRACE_STRATEGIES limits the kinds (docs/live.md, "Attach
strategies"). tracefs holds tracepoint ids and formats and kprobe_events:
``ensure_tracefs`` mounts it where nothing has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True)
class Strategy:
    kind: str    # "fentry" or "kprobe" (function), "tracepoint" (group:name), "tp_btf" or "raw_tracepoint" (name)
    target: str
    needs: tuple[str, ...] = ()  # kallsyms symbols the program compares against
    # function probes: the program's functions to attach, as (how, function name),
    # how = fentry|fexit or kprobe|kretprobe; tp_btf: (tp_btf, the function)
    attach: tuple[tuple[str, str], ...] = ()


FUNCTION_KINDS = ("fentry", "kprobe")
KINDS = FUNCTION_KINDS + ("tp_btf", "tracepoint", "raw_tracepoint")
# Loaded by vtrace itself against a BTF id (vtrace/kernel/fentry.py), not by bcc.
BTF_KINDS = ("fentry", "tp_btf")


def tracefs() -> str | None:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


mounted_here: list[str] = []  # what this process mounted (said once on stderr)


def ensure_tracefs() -> tuple[str | None, str]:
    """tracefs's root, mounted first at /sys/kernel/tracing if nothing has, as
    perf does (tools/lib/api/fs/tracing_path.c, tracefs__mount): tracepoint ids
    and formats, bcc's tracepoint structs and kprobe_events all live there, and
    a minimal host or container may boot without it. Returns (root, why): why
    says what failed when root is None. The mount is left for later runs, as
    perf leaves it; it is said once on stderr."""
    root = tracefs()
    if root is not None:
        return root, ""
    if os.geteuid() != 0:
        return None, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    import ctypes
    import sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    # debugfs is the way in on kernels before 4.1 (tracing appears under it)
    for fstype, target in (("tracefs", TRACEFS_DIRS[0]), ("debugfs", os.path.dirname(TRACEFS_DIRS[1]))):
        if not os.path.isdir(target):
            continue
        if libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) != 0:
            err = os.strerror(ctypes.get_errno())
            return None, f"tracefs is not mounted and mounting it failed ({fstype} on {target}: {err})"
        root = tracefs()
        if root is not None:
            if not mounted_here:
                sys.stderr.write(f"vtrace: tracefs was not mounted; mounted it at {root}\n")
            mounted_here.append(root)
            return root, ""
    return None, "tracefs is not mounted and this kernel has no mount point for it (/sys/kernel/tracing)"


def tracepoint_exists(target: str, root: str | None = None) -> bool:
    """``group:name`` or a raw tracepoint's ``name`` (searched in every group)."""
    root = root or tracefs()
    if root is None:
        return False
    if ":" in target:
        g, n = target.split(":", 1)
        return os.path.isdir(os.path.join(root, "events", g, n))
    ev = os.path.join(root, "events")
    try:
        return any(os.path.isdir(os.path.join(ev, g, target)) for g in os.listdir(ev))
    except OSError:
        return False


def kprobes_available(root: str | None = None) -> bool:
    root = root or tracefs()
    return root is not None and os.path.exists(os.path.join(root, "kprobe_events"))


def allowed() -> tuple[str, ...]:
    """The strategy kinds vtrace may use: all, or those VTRACE_STRATEGIES lists
    (comma-separated, e.g. ``kprobe,tracepoint,raw_tracepoint`` to leave fentry out)."""
    env = os.environ.get("VTRACE_STRATEGIES", "").strip()
    if not env:
        return KINDS
    kinds = tuple(k.strip() for k in env.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"VTRACE_STRATEGIES: unknown strategy {', '.join(bad)} (known: {', '.join(KINDS)})")
    return kinds


def fentry_target(s: Strategy, symbols) -> tuple[int, int, int]:
    """(BTF id, BTF object fd, argument count) of a fentry strategy's function.
    fentry needs the function under its own name: the kernel looks the BTF
    name up in kallsyms, so a function only present as a clone (.constprop,
    .isra) or inlined away cannot take one."""
    from vtrace.kernel import fentry
    syms = symbols.lookup(s.target) if symbols is not None else []
    exact = [x for x in syms if x.name == s.target]
    if not exact:
        clones = ", ".join(x.name for x in syms)
        raise fentry.FentryError(f"{s.target} is not in /proc/kallsyms under its own name"
                                 + (f" (only {clones})" if clones else ""))
    return fentry.target(s.target, exact[0].module or None)


def choose(strategies: tuple[Strategy, ...], symbols=None, root: str | None = None,
           fentry_ok: tuple[bool, str] | None = None, skip: tuple[str, ...] = (),
           tp_btf_ok: tuple[bool, str] | None = None) -> tuple[Strategy | None, str]:
    """(the first of a point's strategies to use, or None, and why not). fentry_ok, tp_btf_ok: (can
    this kernel load fentry, tp_btf programs, why not), tried on the kernel when
    not given; skip: kinds already refused for this point."""
    from vtrace.kernel import btf, fentry
    why = []
    kinds = allowed()
    for s in strategies:
        if s.kind not in kinds:
            why.append(f"{s.kind}: left out by VTRACE_STRATEGIES")
            continue
        if s.kind in skip:
            continue
        if s.kind == "fentry":
            ok, no = fentry_ok if fentry_ok is not None else fentry.available()
            if not ok:
                why.append(f"fentry: {no}")
                continue
        if s.kind == "tp_btf":
            ok, no = tp_btf_ok if tp_btf_ok is not None else fentry.tp_btf_available()
            if ok:
                try:
                    fentry.tp_target(s.target)
                except (fentry.FentryError, btf.BtfError) as e:
                    ok, no = False, str(e)
            if not ok:
                why.append(f"tp_btf: {no}")
                continue
        if s.kind == "kprobe" and not kprobes_available(root):
            why.append("kprobes are not available (CONFIG_KPROBES off or tracefs missing)")
            continue
        if s.kind in FUNCTION_KINDS and (symbols is None or not symbols.lookup(s.target)):
            why.append(f"{s.target} is not in /proc/kallsyms (module not loaded, or inlined)")
            continue
        if s.kind == "fentry":
            try:
                fentry_target(s, symbols)
            except (fentry.FentryError, btf.BtfError) as e:
                why.append(f"fentry: {e}")
                continue
        if s.kind in ("tracepoint", "raw_tracepoint"):
            if root is None and tracefs() is None:
                why.append("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
                continue
            if not tracepoint_exists(s.target, root):
                why.append(f"no tracepoint {s.target} in this kernel")
                continue
        missing = [n for n in s.needs if symbols is None or not symbols.lookup(n)]
        if missing:
            why.append(f"{', '.join(missing)} not in /proc/kallsyms (driver not built in or not loaded)")
            continue
        return s, ""
    return None, "; ".join(dict.fromkeys(why)) or "no strategy"
