"""Text and JSON renderings of a Snapshot: `vtrace stat` rows and `vtrace report`.

Reads only the Snapshot (the outputs' one contract), never a source.
"""

from __future__ import annotations

import errno
import time
from typing import Iterable


from vtrace.aggregate import QueueStats, Snapshot
from vtrace import vfio
from vtrace.fmt import bytes_, dur, free, log2_hist_lines, mb, ratio, si
from vtrace.kvmexits import ISAS as KVM_ISAS
from vtrace.vocab import divergence_counts, source_label, state_short

SORT_KEYS = {
    "name": lambda q: (q.vm, q.device, q.queue),
    "avail": lambda q: -q.avail_rate,
    "used": lambda q: -q.used_rate,
    "bytes": lambda q: -q.bytes_rate,
    "inflight": lambda q: -q.in_flight,
    "p99": lambda q: -(q.p99_ns or 0),
}


def mig_arc(a) -> str:
    """A migration FSM arc as the report prints it: ``RUNNING->STOP (to STOP_COPY)``,
    or ``STOP to PRE_COPY refused (EINVAL)``."""
    n = vfio.mig_state_name
    if a.next is None:
        return f"{n(a.cur)} to {n(a.new)} refused ({errno.errorcode.get(a.errno, a.errno)})"
    return f"{n(a.cur)}->{n(a.next)}" + ("" if a.next == a.new else f" (to {n(a.new)})")


def select(s: Snapshot, *, vms: Iterable[str] = (), sort: str = "name", top: int | None = None,
           show_all: bool = False) -> list[QueueStats]:
    vms = set(vms)
    qs = [q for q in s.queues if (show_all or q.active) and (not vms or q.vm in vms)]
    qs.sort(key=SORT_KEYS[sort])
    return qs[:top] if top else qs


STAT_COLS = (f"{'VM':<7} {'DEV':<7} {'QUEUE':<6} {'AVL/s':>5} {'USE/s':>5} {'SIG/s':>5} {'MB/s':>5} "
             f"{'INFL':>4} {'P50':>6} {'P99':>6} {'K/B':>4} {'S/B':>4} ST")


def stat_summary(s: Snapshot) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(s.wall_time))
    errs = sum(a.count for a in s.admin if a.status != 0)
    line = (f"{t} events {si(s.events_rate)}/s  lost {s.lost_total}  queues {len(s.queues)}"
            f"  admin errors {errs}")
    if s.unknown_kind_total:
        line += f"  unknown kinds {s.unknown_kind_total}"
    return line


def stat_rows(qs: list[QueueStats]) -> list[str]:
    rows = []
    for q in qs:
        est = not q.latency_exact
        rows.append(
            f"{q.vm[:7]:<7} {q.device[:7]:<7} {q.name[:6]:<6} {si(q.avail_rate):>5} {si(q.used_rate):>5} "
            f"{si(q.signal_rate):>5} {mb(q.bytes_rate):>5} {q.in_flight:>4} {dur(q.p50_ns, est):>6} "
            f"{dur(q.p99_ns, est):>6} "
            f"{ratio(q.kicks_per_buffer):>4} {ratio(q.signals_per_buffer):>4} "
            f"{state_short(q.state):<4}".rstrip())
    return rows


def queue_dict(q: QueueStats) -> dict:
    d = {k: getattr(q, k) for k in (
        "vm", "device", "dev_type", "backend", "queue", "name", "size", "layer", "state",
        "avail_total", "fetch_total", "used_total", "used_bytes_total", "read_bytes_total", "kicks_total",
        "kicks_suppressed_total", "signals_total", "signals_suppressed_total", "orphan_used_total",
        "avail_rate", "used_rate", "used_bytes_rate", "read_bytes_rate", "kick_rate", "signal_rate",
        "kicks_per_buffer", "signals_per_buffer", "in_flight", "in_flight_max", "in_flight_max_total",
        "latency_count", "latency_sum_ns", "p50_ns", "p99_ns", "latency_exact", "free_at_signal",
        "free_at_signal_sum_total", "free_at_signal_count_total")}
    d["obj"] = hex(q.obj)
    if q.last_suspend is not None:
        r = q.last_suspend
        d["last_suspend"] = {"ts": r.ts, "reason": r.reason, "in_flight": r.in_flight,
                             "heads": list(r.heads), "base": r.base, "restored_base": r.restored_base}
    return d


def stat_json(s: Snapshot, qs: list[QueueStats], vms: Iterable[str] = ()) -> dict:
    """One interval of `vtrace stat -j`: the queues ``qs``, and the KVM exits of
    each VM (of ``vms`` if given) by reason name, as totals."""
    vms = set(vms)
    return {"time": s.wall_time, "ts_end": s.ts_end, "interval_ns": s.interval_ns,
            "source": s.source.get("source"), "simulated": s.simulated,
            "events_rate": s.events_rate, "events_total": s.events_total, "lost_total": s.lost_total,
            "unknown_kind_total": s.unknown_kind_total, "queues": [queue_dict(q) for q in qs],
            "vms": [{"vm": v.vm, "exits_total": sum(n for _, n in v.exits_by_reason),
                     "exits_by_reason": dict(v.exits_by_reason)}
                    for v in s.vms if v.exits_by_reason and (not vms or v.vm in vms)]}


# report ---------------------------------------------------------------------
def backend_lines(queues: Iterable[QueueStats]) -> list[str]:
    """A BACKENDS section: each device with a known backend (a vhost-net tap,
    a vhost-vsock guest CID), its type and queues; none if no device has one."""
    devs: dict[tuple[str, str], tuple[str, str, list[tuple[int, str]]]] = {}
    for q in queues:
        if q.backend:
            devs.setdefault((q.vm, q.device), (q.dev_type, q.backend, []))[2].append((q.queue, q.name or str(q.queue)))
    if not devs:
        return []
    w = max(len(f"{vm}/{d}") for vm, d in devs)
    return ["", "BACKENDS"] + [f"  {f'{vm}/{d}':<{w}}  {t:<6} {b:<16} {' '.join(n for _q, n in sorted(qs))}".rstrip()
                               for (vm, d), (t, b, qs) in sorted(devs.items())]


def report_text(s: Snapshot, *, hist_top: int = 6, show_all: bool = False) -> str:
    out: list[str] = []
    w = out.append
    span = ((s.ts_end - s.ts_first) / 1e9) if s.ts_first is not None else 0.0
    w(f"source   {source_label(s)}")
    w(f"host     {s.source.get('host', '?')}   kernel {s.source.get('kernel', '?')}")
    created = s.source.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created else "?"
    w(f"captured {when}, {span:.2f} s, {s.events_total:,} events, {s.lost_total:,} lost"
      + (f", {s.unknown_kind_total:,} of unknown kind" if s.unknown_kind_total else "")
      + (f", {s.unidentified_total:,} from unidentified objects" if s.unidentified_total else "")
      + (f", {s.time_reversals:,} used before available (latency 0)" if s.time_reversals else ""))
    if s.probes:
        ok = sum(p.attached for p in s.probes)
        w(f"probes   {ok} attached, {len(s.probes) - ok} failed")
        for p in s.probes:
            if not p.attached:
                w(f"         failed: {p.layer} {p.point} ({p.strategy}): {p.error}")
    if s.damage:
        w(f"WARNING  {s.damage}")
    w("")
    qs = select(s, show_all=show_all)
    w(f"QUEUES ({len(qs)} with traffic" + (")" if show_all else f" of {len(s.queues)}; --all for every queue)"))
    w(f"{'VM':<8} {'DEV':<7} {'QUEUE':<6} {'AVAIL':>8} {'USED':>8} {'BYTES':>9} {'INFL':>5} {'MAX':>5} {'FREE':>5} "
      f"{'P50':>6} {'P99':>6} {'K/B':>5} {'S/B':>5} STATE")
    for q in qs:
        kpb = q.kicks_total / q.used_total if q.used_total else None
        spb = q.signals_total / q.used_total if q.used_total else None
        fr = q.free_at_signal_sum_total / q.free_at_signal_count_total if q.free_at_signal_count_total else None
        w(f"{q.vm[:8]:<8} {q.device[:7]:<7} {q.name[:6]:<6} {q.avail_total:>8} {q.used_total:>8} "
          f"{bytes_(q.used_bytes_total + q.read_bytes_total):>9} {q.in_flight:>5} {q.in_flight_max_total:>5} "
          f"{free(fr):>5} "
          f"{dur(q.p50_ns):>6} {dur(q.p99_ns):>6} {ratio(kpb):>5} {ratio(spb):>5} "
          f"{q.state}")
    out.extend(backend_lines(s.queues))
    busiest = sorted((q for q in qs if q.latency_count), key=lambda q: -q.latency_count)
    if not show_all:
        busiest = busiest[:hist_top]
    if busiest:
        w("")
        w("COMPLETION LATENCY (available -> used; log2 histograms"
          + ("" if show_all else f", {len(busiest)} busiest queues") + ")")
        for q in busiest:
            w("")
            mean = q.latency_sum_ns / q.latency_count
            how = "exact" if q.latency_exact and q.p50_ns is not None else "from samples"
            w(f"{q.label}: {q.latency_count:,} completions, mean {dur(mean)}, "
              f"p50 {dur(q.p50_ns)}, p99 {dur(q.p99_ns)} ({how})")
            out.extend(log2_hist_lines(q.latency_hist))
    if s.admin:
        w("")
        w("ADMIN COMMANDS")
        w(f"{'OPCODE':<26} {'STATUS':<8} {'COUNT':>7} {'MEAN':>7} {'P50':>7} {'P99':>7} {'MAX':>7}  QUALIFIERS")
        for a in s.admin:
            quals = ", ".join(f"{n} {c}" for n, c in a.qualifiers)
            w(f"{a.opcode_name[:26]:<26} {a.status_name[:8]:<8} {a.count:>7} "
              f"{dur(a.latency_sum_ns / a.count if a.count else None):>7} {dur(a.p50_ns):>7} "
              f"{dur(a.p99_ns):>7} {dur(a.max_ns):>7}  {quals}")
    if s.vms:
        w("")
        w("KVM AND DMA (per VM)")
        w(f"{'VM':<8} {'EXITS':>8} {'PIO':>7} {'IOEVTFD':>8} {'IRQFD':>8} {'DMA MAP':>9} {'UNMAP':>9} "
          f"NONCOHERENT")
        for v in s.vms:
            exits = sum(c for _, c in v.exits_by_reason)
            w(f"{v.vm[:8]:<8} {exits:>8} {v.pio_total:>7} {v.ioeventfd_total:>8} {v.irqfd_total:>8} "
              f"{bytes_(v.dma_map_bytes_total):>9} {bytes_(v.dma_unmap_bytes_total):>9} "
              f"{'yes' if v.noncoherent_dma else 'no'}")
        isa = s.source.get("kvm_isa")
        if any(v.exits_by_reason for v in s.vms) and isa not in KVM_ISAS:
            w("  (exit reasons as numbers: " + (f"no table names {isa}'s exits)" if isa else
                                                "the source does not say whether the host ran VMX or SVM)"))
        for v in s.vms:
            if v.exits_by_reason:
                w(f"  {v.vm} exits by reason: " + ", ".join(f"{r}:{c}" for r, c in v.exits_by_reason))
        for v in s.vms:
            if v.vfio_ioctls or v.vfio_region_reads_total or v.vfio_region_writes_total or v.vfio_mmaps_total:
                w(f"  {v.vm} vfio: {v.vfio_region_reads_total} region reads, {v.vfio_region_writes_total} "
                  f"writes ({bytes_(v.vfio_region_bytes_total)}), {v.vfio_mmaps_total} mmaps; ioctls: "
                  + ", ".join(f"{vfio.ioctl_name(fd, cmd)} {n}" + (f" ({err} failed)" if err else "")
                              for fd, cmd, n, err in v.vfio_ioctls))
        for v in s.vms:
            if v.migration_arcs_total:
                w(f"  {v.vm} migration: {v.migration_device} {vfio.mig_state_name(v.migration_state)}; "
                  f"{v.migration_arcs_total} FSM arcs, {v.migration_refused_total} refused; latest: "
                  + ", ".join(map(mig_arc, v.migration_arcs[-8:])))
    life = [q for q in s.queues if q.timeline]
    if life:
        w("")
        w("LIFECYCLE")
        t0 = s.ts_first or 0
        for q in life:
            steps = ", ".join(f"{e.what}{' ' + e.detail if e.detail else ''} @{(e.ts - t0) / 1e9:.3f}s"
                              for e in q.timeline[-6:])
            w(f"{q.label}: {steps}")
            r = q.last_suspend
            if r is not None:
                heads = ", ".join(str(h) for h in r.heads[:16])
                more = r.in_flight - 16
                w(f"    in flight at last {r.reason} (@{(r.ts - t0) / 1e9:.3f}s): {r.in_flight}"
                  + (f" [heads {heads}{f' +{more} more' if more > 0 else ''}]" if r.heads else "")
                  + (f"; base {r.base}" if r.base is not None else "")
                  + (f", restored {r.restored_base}" if r.restored_base is not None else ""))
    if s.divergences:
        w("")
        w("DIVERGENCES FROM THE SPEC (details: vtrace check FILE)")
        for rule, sev, n in divergence_counts(s):
            w(f"  {sev:<7} {rule:<28} {n:>8,}")
    w("")
    w("EVENTS BY KIND")
    w("  " + ", ".join(f"{k} {c:,}" for k, c in s.events_by_kind))
    return "\n".join(out) + "\n"


def report_json(s: Snapshot) -> dict:
    return {
        "source": s.source, "damage": s.damage, "ts_first": s.ts_first, "ts_end": s.ts_end,
        "events_total": s.events_total, "lost_total": s.lost_total,
        "unknown_kind_total": s.unknown_kind_total, "unidentified_total": s.unidentified_total,
        "time_reversals": s.time_reversals, "events_by_kind": dict(s.events_by_kind),
        "divergences": [{"rule": r, "severity": sev, "count": n} for r, sev, n in divergence_counts(s)],
        "probes": [p.__dict__ for p in s.probes],
        "queues": [dict(queue_dict(q), latency_hist=q.latency_hist.tolist()) for q in s.queues],
        "admin": [{"opcode": a.opcode, "opcode_name": a.opcode_name, "status": a.status,
                   "status_name": a.status_name, "count": a.count, "latency_sum_ns": a.latency_sum_ns,
                   "p50_ns": a.p50_ns, "p99_ns": a.p99_ns, "max_ns": a.max_ns,
                   "latency_hist": a.latency_hist.tolist(), "qualifiers": dict(a.qualifiers)}
                  for a in s.admin],
        "vms": [dict(v.__dict__, exits_by_reason=dict(v.exits_by_reason),
                     migration_state_name=vfio.mig_state_name(v.migration_state),
                     migration_arcs=[dict(a.__dict__) for a in v.migration_arcs]) for v in s.vms],
    }
