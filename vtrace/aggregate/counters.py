"""Counters: hits per (object, event kind) and the sums the byte rules add
up per object, from events and from counts the kernel summed.

The byte rules (``BYTE_RULES``) are the one place that says which kind
carries which amount into which sum: the bytes a device wrote (USED), the
device-readable bytes of started chains (AVAIL/FETCH), DMA mapped and
unmapped, and the guest driver's free descriptors at its interrupts. Events
carry the amount in a record field; a counting live source's kernel
(probes/vtrace_emit.inc) sums the same field into its count rows' ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vtrace.events import UNOBSERVED, Kind, Layer

from .slots import PerSlotArrays, sum_by_slot

# Dense kind index: counters are a (slots x NK) matrix, the last column for
# kinds vtrace does not know.
KINDS = [int(k) for k in Kind]
NK = len(KINDS) + 1
K_UNKNOWN = NK - 1
KIDX = np.full(256, K_UNKNOWN, dtype=np.int64)
for _i, _k in enumerate(KINDS):
    KIDX[_k] = _i
KI = {Kind(k): i for i, k in enumerate(KINDS)}

# Columns of Counters.sums.
USED_BYTES = 0         # written by the device (used.len)
READ_BYTES = 1         # device-readable bytes of started chains
DMA_MAP_BYTES = 2
DMA_UNMAP_BYTES = 3
FREE_AT_SIGNAL = 4     # the guest driver's free descriptors, summed over its interrupts
FREE_AT_SIGNAL_N = 5   # the interrupts that said how many were free
NSUMS = 6


@dataclass(frozen=True)
class ByteRule:
    """Events of ``kinds`` (from ``layer`` only, when set) add the amount in
    their ``field`` to the sum in ``column``; with ``counted_in`` set, the
    events that carried an amount are counted there too. An amount a probe
    did not see (UNOBSERVED, when ``may_be_unobserved``) adds nothing, not 4 GiB."""

    kinds: tuple[Kind, ...]
    field: str
    column: int
    may_be_unobserved: bool = True
    layer: Layer | None = None
    counted_in: int | None = None
    kind_columns: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind_columns", [KI[k] for k in self.kinds])

    def matches(self, kind: np.ndarray, layer: np.ndarray) -> np.ndarray:
        m = kind == self.kinds[0]
        for k in self.kinds[1:]:
            m |= kind == k
        if self.layer is not None:
            m &= layer == self.layer
        return m


BYTE_RULES: tuple[ByteRule, ...] = (
    ByteRule((Kind.USED,), "len", USED_BYTES),
    ByteRule((Kind.AVAIL, Kind.FETCH), "aux", READ_BYTES),
    ByteRule((Kind.DMA_MAP,), "arg", DMA_MAP_BYTES, may_be_unobserved=False),
    ByteRule((Kind.DMA_UNMAP,), "arg", DMA_UNMAP_BYTES, may_be_unobserved=False),
    ByteRule((Kind.SIGNAL,), "aux2", FREE_AT_SIGNAL, layer=Layer.VIRTIO_GUEST, counted_in=FREE_AT_SIGNAL_N),
)


class Counters(PerSlotArrays):
    """Per slot: hits per kind and the byte rules' sums, with the values at
    the start of the interval (``interval_*``) for per-interval rates."""

    PER_SLOT = ("hits", "sums", "hits_at_interval", "sums_at_interval")

    def __init__(self, cap: int):
        self.hits = np.zeros((cap, NK), dtype=np.int64)
        self.sums = np.zeros((cap, NSUMS), dtype=np.int64)
        self.hits_at_interval = np.zeros((cap, NK), dtype=np.int64)
        self.sums_at_interval = np.zeros((cap, NSUMS), dtype=np.int64)
        self.unknown_kinds = 0

    def tally(self, slot: np.ndarray, kind: np.ndarray, nslots: int, n: np.ndarray | None = None) -> np.ndarray:
        """Add hits per (slot, kind): one per event, or ``n`` each (kernel
        counts). Returns the added hits as a (nslots x NK) matrix."""
        added = np.bincount(slot * NK + KIDX[kind], weights=n, minlength=nslots * NK)
        added = added.astype(np.int64, copy=False).reshape(nslots, NK)
        self.hits[:nslots] += added
        self.unknown_kinds += int(added[:, K_UNKNOWN].sum())
        return added

    def add_bytes(self, rows: np.ndarray, slot: np.ndarray, nslots: int, *, counted: bool = False,
                  kinds_seen: np.ndarray | None = None) -> None:
        """Add every byte rule's amounts per slot. ``rows`` are events, or with
        ``counted`` kernel count rows (the amount summed in ``bytes`` over
        ``n`` hits). ``kinds_seen`` (bool per kind column) skips rules whose
        kinds are absent."""
        kind, layer = rows["kind"], rows["layer"]
        for rule in BYTE_RULES:
            if kinds_seen is not None and not kinds_seen[rule.kind_columns].any():
                continue
            m = rule.matches(kind, layer)
            if counted:
                amount, hits = rows["bytes"], rows["n"]
            else:
                amount, hits = rows[rule.field], None
                if rule.may_be_unobserved:
                    m &= amount != UNOBSERVED
            if not m.any():
                continue
            self.sums[:nslots, rule.column] += sum_by_slot(slot[m], amount[m], nslots)
            if rule.counted_in is not None:
                self.sums[:nslots, rule.counted_in] += (np.bincount(slot[m], minlength=nslots) if hits is None
                                                        else sum_by_slot(slot[m], hits[m], nslots))

    def by_kind(self, nslots: int) -> tuple[tuple[str, int], ...]:
        """(kind label, hits) over every slot, for the kinds seen; unknown last."""
        totals = self.hits[:nslots].sum(axis=0)
        out = tuple((Kind(k).label, int(totals[i])) for i, k in enumerate(KINDS) if totals[i])
        if totals[K_UNKNOWN]:
            out += (("unknown", int(totals[K_UNKNOWN])),)
        return out

    def close_interval(self, nslots: int) -> None:
        self.hits_at_interval[:nslots] = self.hits[:nslots]
        self.sums_at_interval[:nslots] = self.sums[:nslots]
