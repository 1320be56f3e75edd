"""Small formatting helpers shared by `vtrace stat`, `report` (vtrace/report.py)
and `top` (vtrace/tui/view.py, app.py): a figure is written the same way in each."""

from __future__ import annotations

import math


def dur(ns: float | None, approx: bool = False) -> str:
    """Human duration that fits in 6 columns: 850ns 84.4us 18.3ms 1.20s.

    ``approx``: an estimate (a log2 bucket), marked and shown with the two
    digits it deserves in the same width: ~850ns ~1.2us ~84us."""
    if ns is None:
        return "-"
    if approx:
        for div, unit in ((1, "ns"), (1e3, "us"), (1e6, "ms"), (1e9, "s")):
            v = ns / div
            if v < 999.5 or unit == "s":
                return f"~{v:.1f}{unit}" if v < 9.95 else f"~{v:.0f}{unit}"
    if ns < 1_000:
        return f"{ns:.0f}ns"
    for div, unit in ((1e3, "us"), (1e6, "ms"), (1e9, "s")):
        v = ns / div
        if v < 1_000 or unit == "s":
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{ns / 1e9:.0f}s"


def si(x: float | None) -> str:
    """Rates and counts in at most 6 columns: 950 12.3k 1.5M."""
    if x is None:
        return "-"
    if x < 1_000:
        return f"{x:.0f}" if x >= 10 or x == 0 or x == int(x) else f"{x:.1f}"
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        v = x / div
        if v < 1_000:
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{x:.2g}"


def bytes_(x: float) -> str:
    for div, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}B"


def mb(x: float) -> str:
    """Bytes per second as MB/s with one decimal: 0.0 12.3 1234.5."""
    return f"{x / 1e6:.1f}"


def ratio(x: float | None) -> str:
    """Per-buffer ratios in at most 4 columns: 0.17 12.3 140."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def free(x: float | None) -> str:
    """Mean free descriptors at the driver's interrupts: whole descriptors, '-' when none said."""
    return "-" if x is None else f"{x:.0f}"


def parse_duration(text: str) -> int:
    """'10s', '500ms', '2m', '1h', '1.5' (seconds) -> nanoseconds. ValueError if bad."""
    t = text.strip().lower()
    units = (("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9), ("h", 3600e9))
    mult = 1e9
    for suf, m in units:
        if t.endswith(suf):
            t, mult = t[: -len(suf)], m
            break
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"bad duration {text!r} (use e.g. 10s, 500ms, 2m)") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return int(v * mult)


def log2_hist_lines(hist, unit: str = "usecs", divisor: float = 1000.0, width: int = 40) -> list[str]:
    """bcc-style print_log2_hist of ns buckets, rescaled to ``unit``.

    Bucket b holds [2^b, 2^(b+1)) ns; rows are shown from the first to the
    last non-empty bucket with no gaps, like bcc.
    """
    nz = [i for i, c in enumerate(hist) if c]
    if not nz:
        return []
    lo, hi = nz[0], nz[-1]
    peak = max(hist[lo:hi + 1])
    lines = [f"{unit:>20} : count     distribution"]
    for b in range(lo, hi + 1):
        c = int(hist[b])
        a, z = (2 ** b) / divisor, (2 ** (b + 1)) / divisor
        stars = int(round(width * c / peak)) if peak else 0
        lines.append(f"{_num(a):>9} -> {_num(z):<9}: {c:<9} |{'*' * stars:<{width}}|")
    return lines


def _num(v: float) -> str:
    # ns buckets rescaled: 4.1 -> 8.19 usecs, not a misleading "4 -> 8"
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"
