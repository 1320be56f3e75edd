"""JSON Lines traces: what ``vtrace convert --to jsonl`` writes and replay reads.

One JSON object per line. The first is a header; then ``object`` lines
(identities) and ``event`` lines whose payload fields carry the names of
KIND_FIELDS (``head``, ``used_len``, ``opcode``...), so hand-written and
third-party traces can use the same words the docs use. docs/jsonl.md has
the schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Iterator

import numpy as np

from vtrace.events import (KIND_FIELDS, NO_QUEUE, OPTIONAL_FIELDS, RECORD_DTYPE, UNOBSERVED, Batch,
                           ObjectInfo, ProbeStatus, kind_name, layer_name, parse_kind, parse_layer)

FORMAT = "vtrace-jsonl"
VERSION = 1
PAYLOAD = ("id", "len", "aux", "aux2", "arg")
_NAMES: dict[int, dict[str, str]] = {int(k): v for k, v in KIND_FIELDS.items()}
_REVERSE: dict[int, dict[str, str]] = {k: {name: col for col, name in v.items()} for k, v in _NAMES.items()}
# Columns that default to UNOBSERVED (not 0) when a line leaves them out.
_OPTIONAL_COLS: dict[int, frozenset[str]] = {
    int(k): frozenset(_REVERSE[int(k)][n] for n in names) for k, names in OPTIONAL_FIELDS.items()}
BATCH = 65536


def header_line(header: dict) -> str:
    h = {"type": "header", "format": FORMAT, "version": VERSION}
    h.update({k: v for k, v in header.items() if k not in ("type", "format", "version", "record")})
    return json.dumps(h, sort_keys=True, default=str)


def event_dicts(ev: np.ndarray) -> Iterator[dict]:
    cols = {n: ev[n].tolist() for n in RECORD_DTYPE.names}
    for i in range(ev.size):
        k = cols["kind"][i]
        d = {"type": "event", "ts": cols["ts"][i], "kind": kind_name(k),
             "layer": layer_name(cols["layer"][i]), "obj": hex(cols["obj"][i]), "pid": cols["pid"][i]}
        q = cols["queue"][i]
        if q != NO_QUEUE:
            d["queue"] = q
        names = _NAMES.get(k, {})
        optional = _OPTIONAL_COLS.get(k, ())
        for c in PAYLOAD:
            v = cols[c][i]
            if c in optional and v == UNOBSERVED:
                continue  # not seen by the probe: absent, as readers expect
            if c in names:
                d[names[c]] = v
            elif v:
                d[c] = v  # a field this kind does not name: keep it, generically
        yield d


def write_jsonl(out: IO[str], header: dict, batches) -> int:
    out.write(header_line(header) + "\n")
    n = 0
    for b in batches:
        for o in b.objects:
            out.write(json.dumps({"type": "object", **o.to_json()}) + "\n")
        if b.probes is not None:
            out.write(json.dumps({"type": "meta", "probes": [p.__dict__ for p in b.probes]}) + "\n")
        for d in event_dicts(b.events):
            out.write(json.dumps(d) + "\n")
        n += b.events.size
    return n


def _int(v, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{what} must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        return int(v, 0)
    raise ValueError(f"{what} must be an integer")


def parse_event(d: dict) -> tuple:
    """One event object -> a record tuple in RECORD_DTYPE order. Raises ValueError."""
    kind = parse_kind(str(d["kind"])) if "kind" in d else None
    if kind is None:
        raise ValueError("event without kind")
    if not 0 <= kind <= 255:
        raise ValueError(f"kind {kind} out of range")
    rev = _REVERSE.get(kind, {})
    vals = {c: 0 for c in PAYLOAD}
    for c in _OPTIONAL_COLS.get(kind, ()):
        vals[c] = UNOBSERVED
    for key, v in d.items():
        if key in ("type", "ts", "kind", "layer", "obj", "pid", "queue"):
            continue
        col = rev.get(key, key if key in PAYLOAD else None)
        if col is None:
            raise ValueError(f"field {key!r} is not known for kind {kind_name(kind)}")
        vals[col] = _int(v, key)
    ts = _int(d.get("ts"), "ts")
    layer = parse_layer(str(d.get("layer", "vtrace")))
    rec = (ts, _int(d.get("obj", 0), "obj"), vals["arg"], _int(d.get("pid", 0), "pid"), vals["id"],
           vals["len"], vals["aux"], vals["aux2"], _int(d.get("queue", NO_QUEUE), "queue"), kind, layer)
    limits = (64, 64, 64, 32, 32, 32, 32, 32, 16, 8, 8)
    for v, bits, (name, _) in zip(rec, limits, RECORD_DTYPE.descr):
        if not 0 <= v < (1 << bits):
            raise ValueError(f"{name} {v} out of range")
    return rec


@dataclass
class JsonlStats:
    lines: int = 0
    events: int = 0
    objects: int = 0
    bad: int = 0
    first_bad: list[str] = field(default_factory=list)
    complete: bool = True

    def summary(self, path: str) -> str | None:
        if not self.bad:
            return None
        return (f"{path}: {self.bad} bad lines skipped ({'; '.join(self.first_bad)}); "
                f"read {self.events} events")


class JsonlReader:
    def __init__(self, path: str):
        from vtrace.capture import CaptureError
        self.path = path
        try:
            self.f = open(path, "r", encoding="utf-8", errors="replace")
        except OSError as e:
            raise CaptureError(f"cannot read {path}: {e.strerror}") from None
        first = self.f.readline()
        try:
            h = json.loads(first)
        except ValueError:
            self.f.close()
            raise CaptureError(f"{path}:1: not a vtrace JSON Lines header") from None
        if not isinstance(h, dict) or h.get("type") != "header" or h.get("format") != FORMAT:
            self.f.close()
            raise CaptureError(f"{path}:1: first line must be a header with format {FORMAT!r}")
        if h.get("version") != VERSION:
            self.f.close()
            raise CaptureError(f"{path}: JSON Lines version {h.get('version')}; this vtrace reads {VERSION}")
        self.header = h
        self.stats = JsonlStats(lines=1)

    def close(self) -> None:
        self.f.close()

    def _bad(self, lineno: int, why: str) -> None:
        self.stats.bad += 1
        if len(self.stats.first_bad) < 3:
            self.stats.first_bad.append(f"line {lineno}: {why}")

    def batches(self) -> Iterator[Batch]:
        recs: list[tuple] = []
        objects: list[ObjectInfo] = []
        probes = None
        for lineno, line in enumerate(self.f, start=2):
            self.stats.lines += 1
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise ValueError("not an object")
                t = d.get("type", "event")
                if t == "event":
                    recs.append(parse_event(d))
                elif t == "object":
                    objects.append(ObjectInfo.from_json(d))
                    self.stats.objects += 1
                elif t == "meta":
                    if "probes" in d:
                        probes = tuple(ProbeStatus(**p) for p in d["probes"])
                else:
                    raise ValueError(f"unknown line type {t!r}")
            except (ValueError, KeyError, TypeError) as e:
                self._bad(lineno, str(e).splitlines()[0][:120])
                continue
            if len(recs) >= BATCH:
                yield self._batch(recs, objects, probes)
                recs, objects, probes = [], [], None
        if recs or objects or probes is not None:
            yield self._batch(recs, objects, probes)

    def _batch(self, recs, objects, probes) -> Batch:
        ev = np.array(recs, dtype=RECORD_DTYPE) if recs else np.zeros(0, dtype=RECORD_DTYPE)
        if ev.size and (np.diff(ev["ts"].astype(np.int64)) < 0).any():
            ev = ev[np.argsort(ev["ts"], kind="stable")]  # hand-written traces need not be sorted
        self.stats.events += ev.size
        return Batch(events=ev, t_end=int(ev["ts"][-1]) if ev.size else 0, objects=tuple(objects),
                     probes=probes)
