"""The probe-point tables of `vtrace doctor` and `vtrace probes`: each point's
attach strategy and status, or (with BPF statistics on) its runs and cost.
Pure: takes ProbeStatus rows, returns lines or JSON-ready dicts."""

from __future__ import annotations

from typing import Iterable, Sequence

STATUS_HEAD = f"{'LAYER':<13} {'POINT':<18} {'STRATEGY':<38} {'MISSED':>7} STATUS"
STATS_HEAD = f"{'LAYER':<13} {'POINT':<18} {'RUNS':>10} {'NS/HIT':>8} {'MISSED':>8}"


def missed_cell(p) -> str:
    """A point's skipped runs for a table: the count, '+?' where the kernel skips some uncounted."""
    if not p.attached:
        return "-"
    return f"{p.missed:,}" + ("+?" if p.uncounted else "")


def uncounted_notes(points: Iterable) -> list[str]:
    """Per point, which skipped runs this kernel does not count (the '+?' of MISSED)."""
    notes = [p for p in points if p.attached and p.uncounted]
    if not notes:
        return []
    return ["", "+? not counted by this kernel:"] + [f"  {p.point}: {p.uncounted}" for p in notes]


def status_lines(points: Sequence) -> list[str]:
    """One row per point: where it attached (or why not) and its skipped runs."""
    out = [STATUS_HEAD]
    for p in points:
        status = ("attached" + (f" ({p.error})" if p.error else "")) if p.attached else f"failed: {p.error}"
        out.append(f"{p.layer:<13} {p.point:<18} {p.strategy:<38} {missed_cell(p):>7} {status}")
    return out + uncounted_notes(points)


def stats_lines(rows: Sequence[tuple[str, str, int, int]], status: dict) -> list[str]:
    """``rows``: (layer, point, run_cnt, run_time_ns); ``status``: each point's ProbeStatus by name."""
    out = [STATS_HEAD]
    for layer, point, cnt, ns in rows:
        out.append(f"{layer:<13} {point:<18} {cnt:>10,} {f'{ns / cnt:.0f}' if cnt else '-':>8} "
                   f"{missed_cell(status[point]):>8}")
    return out + uncounted_notes([status[point] for _layer, point, _c, _n in rows])


def stats_json(rows: Sequence[tuple[str, str, int, int]], status: dict) -> list[dict]:
    """The same rows as objects, one per point."""
    return [{"layer": layer, "point": point, "run_cnt": cnt, "run_time_ns": ns,
             "ns_per_hit": round(ns / cnt, 1) if cnt else None,
             "missed": status[point].missed, "uncounted": status[point].uncounted}
            for layer, point, cnt, ns in rows]
