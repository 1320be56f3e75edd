"""Capture files: a versioned, streaming, compressed container of events.

Layout (all integers little-endian; docs/capture.md has the full table)::

    prelude   "VTRACE\\0\\n" | u16 major | u16 minor | u32 hlen | u32 crc32(header)
    header    JSON: host, kernel, source, start time, probes, record layout
    chunk*    "VTCK" | u8 type | u8 codec | u16 0 | u32 nrec | u32 clen | u32 ulen | u32 crc32
              payload (clen bytes)
    index     a chunk of type INDEX (JSON: every chunk's offset, count, time range)
    trailer   "VTEND\\0\\0\\0" | u64 offset of the index chunk

Chunks are written and flushed one by one, so a capture cut short by a crash
or a full disk still holds every chunk written before the cut; the reader
checks each chunk's CRC, skips damage by looking for the next chunk magic,
and reports where each damaged region starts.

EVENTS payloads are columnar: timestamps delta-coded, object pointers
dictionary-coded, every column byte-shuffled (all low bytes, then all next
bytes, ...) and the lot compressed with zstd. Typical sim net traffic packs
into fewer than 8 bytes per 48-byte record.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import zstandard

from vtrace import __version__
from vtrace.events import RECORD_DTYPE, RECORD_FIELDS, UNOBSERVED, Batch, Kind, Layer, ObjectInfo, ProbeStatus

MAGIC = b"VTRACE\x00\n"
FORMAT_MAJOR = 1
# 1.1: a guest virtio SIGNAL's aux2 is free_descs (1.0 left it 0: read as unobserved)
FORMAT_MINOR = 1
PRELUDE = struct.Struct("<8sHHII")
CHUNK_MAGIC = b"VTCK"
CHUNK = struct.Struct("<4sBBHIIII")
TRAILER_MAGIC = b"VTEND\x00\x00\x00"
TRAILER = struct.Struct("<8sQ")

T_EVENTS, T_OBJECTS, T_META, T_INDEX = 1, 2, 3, 4
CODEC_ZSTD = 1
MAX_CHUNK_RECORDS = 1 << 20
MAX_HEADER = 16 << 20
MAX_CHUNK_BYTES = 256 << 20
DEFAULT_CHUNK_RECORDS = 65536


class CaptureError(Exception):
    """A capture that cannot be read (or written). The message is one line."""


# columnar codec ---------------------------------------------------------------
def _shuffle(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.itemsize).T.tobytes()


def _unshuffle(buf: memoryview, n: int, dtype: np.dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    b = np.frombuffer(buf, dtype=np.uint8, count=n * dt.itemsize).reshape(dt.itemsize, n)
    return np.ascontiguousarray(b.T).view(dt).reshape(n)


def encode_events(ev: np.ndarray) -> bytes:
    n = ev.size
    parts = []
    ts = ev["ts"].astype(np.uint64)
    d = np.empty(n, dtype=np.uint64)
    if n:
        d[0] = ts[0]
        np.subtract(ts[1:], ts[:-1], out=d[1:])  # wraps (uint64) if out of order: still lossless
    uniq, inv = np.unique(ev["obj"], return_inverse=True)
    width = 1 if uniq.size <= 0x100 else 2 if uniq.size <= 0x10000 else 4
    parts.append(struct.pack("<IB3x", uniq.size, width))
    parts.append(uniq.astype("<u8").tobytes())
    parts.append(_shuffle(inv.astype(f"<u{width}")))
    for name, dt in RECORD_FIELDS:
        if name == "obj":
            continue
        col = d if name == "ts" else ev[name]
        parts.append(_shuffle(col.astype(dt)))
    return b"".join(parts)


def decode_events(buf: bytes, n: int) -> np.ndarray:
    mv = memoryview(buf)
    try:
        nu, width = struct.unpack_from("<IB3x", mv, 0)
        if width not in (1, 2, 4):
            raise ValueError("bad object index width")
        off = 8
        uniq = np.frombuffer(mv, dtype="<u8", count=nu, offset=off)
        off += 8 * nu
        out = np.empty(n, dtype=RECORD_DTYPE)
        inv = _unshuffle(mv[off:], n, np.dtype(f"<u{width}"))
        off += n * width
        if n and inv.max(initial=0) >= nu:
            raise ValueError("object index out of range")
        out["obj"] = uniq[inv] if n else 0
        for name, dt in RECORD_FIELDS:
            if name == "obj":
                continue
            size = n * np.dtype(dt).itemsize
            if off + size > len(mv):
                raise ValueError("payload too short")
            col = _unshuffle(mv[off:off + size], n, np.dtype(dt))
            off += size
            out[name] = np.cumsum(col, dtype=np.uint64) if name == "ts" else col
        if off != len(mv):
            raise ValueError("payload length mismatch")
        return out
    except (ValueError, struct.error) as e:
        raise CaptureError(f"bad event chunk: {e}") from None


# writer ---------------------------------------------------------------------
def host_info() -> dict:
    u = os.uname()
    return {"host": socket.gethostname(), "kernel": u.release, "machine": u.machine}


def header_for(source, argv) -> dict:
    """The header of a capture of ``source``: its identity, its probes, the
    command line that recorded it."""
    info = dict(source.info)
    return {"source": info, "probes": [p.__dict__ for p in source.probes()], "argv": list(argv),
            "ts_start": info.get("ts_start")}


class CaptureWriter:
    """Streams chunks to ``path``; memory stays bounded by one chunk.

    The file is created with mode 0600 (it can reveal guest activity and
    kernel pointers). ``close()`` writes the index and trailer; without it
    the file is still readable up to the last flushed chunk.
    """

    def __init__(self, path: str, header: dict, *, chunk_records: int = DEFAULT_CHUNK_RECORDS,
                 level: int = 3):
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise CaptureError(f"cannot write {path}: {e.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        except OSError:
            pass
        self.f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.chunk_records = max(1, min(chunk_records, MAX_CHUNK_RECORDS))
        self.cctx = zstandard.ZstdCompressor(level=level)
        self.pending: list[np.ndarray] = []
        self.npending = 0
        self.index: list[dict] = []
        self.events = 0
        self.ts_first: int | None = None
        self.ts_last: int | None = None
        self.closed = False
        hdr = dict(header)
        hdr.setdefault("format", f"{FORMAT_MAJOR}.{FORMAT_MINOR}")
        hdr.setdefault("vtrace_version", __version__)
        hdr.setdefault("created", time.time())
        hdr.setdefault("record", {"size": RECORD_DTYPE.itemsize,
                                  "fields": [[n, t] for n, t in RECORD_FIELDS]})
        for k, v in host_info().items():
            hdr.setdefault(k, v)
        self.header = hdr
        body = json.dumps(hdr, sort_keys=True, default=str).encode()
        self._write(PRELUDE.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(body), zlib.crc32(body)) + body)
        self.f.flush()

    def _write(self, data: bytes) -> None:
        try:
            self.f.write(data)
        except OSError as e:
            raise CaptureError(f"cannot write {self.path}: {e.strerror}") from None

    def _chunk(self, ctype: int, payload: bytes, nrec: int, extra: dict | None = None) -> None:
        comp = self.cctx.compress(payload)
        off = self.f.tell()
        self._write(CHUNK.pack(CHUNK_MAGIC, ctype, CODEC_ZSTD, 0, nrec, len(comp), len(payload),
                               zlib.crc32(comp)) + comp)
        entry = {"offset": off, "type": ctype, "nrec": nrec, "clen": len(comp)}
        if extra:
            entry.update(extra)
        self.index.append(entry)
        try:
            self.f.flush()  # a chunk is either whole on disk or not there
        except OSError as e:
            raise CaptureError(f"cannot write {self.path}: {e.strerror}") from None

    def write_objects(self, objects) -> None:
        objs = [o.to_json() for o in objects]
        if objs:
            self.flush()  # identities precede the events that use them
            self._chunk(T_OBJECTS, json.dumps(objs).encode(), len(objs))

    def write_meta(self, meta: dict) -> None:
        self.flush()
        self._chunk(T_META, json.dumps(meta, default=str).encode(), 0)

    def write_events(self, ev: np.ndarray) -> None:
        if not ev.size:
            return
        if ev.dtype != RECORD_DTYPE:
            raise CaptureError("events do not have the vtrace record layout")
        self.pending.append(ev)
        self.npending += ev.size
        while self.npending >= self.chunk_records:
            allev = self._pending()
            self._flush_events(allev[: self.chunk_records])
            rest = allev[self.chunk_records:]
            self.pending = [rest] if rest.size else []
            self.npending = rest.size

    def write_batch(self, batch: Batch) -> None:
        if batch.objects:
            self.write_objects(batch.objects)
        if batch.probes is not None:
            self.write_meta({"probes": [p.__dict__ for p in batch.probes]})
        self.write_events(batch.events)

    def _flush_events(self, ev: np.ndarray) -> None:
        payload = encode_events(ev)
        t0, t1 = int(ev["ts"][0]), int(ev["ts"][-1])
        self._chunk(T_EVENTS, payload, ev.size, {"ts_first": t0, "ts_last": t1})
        self.events += ev.size
        self.ts_first = t0 if self.ts_first is None else self.ts_first
        self.ts_last = t1

    def _pending(self) -> np.ndarray:
        return np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]

    def flush(self) -> None:
        if self.npending:
            self._flush_events(self._pending())
            self.pending, self.npending = [], 0

    def close(self, summary: dict | None = None) -> None:
        if self.closed:
            return
        try:
            self.flush()
            idx = {"chunks": self.index, "events": self.events, "ts_first": self.ts_first,
                   "ts_last": self.ts_last, "closed": time.time()}
            if summary:
                idx.update(summary)
            off = self.f.tell()
            self._chunk(T_INDEX, json.dumps(idx, default=str).encode(), len(self.index))
            self._write(TRAILER.pack(TRAILER_MAGIC, off))
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise CaptureError(f"cannot write {self.path}: {e.strerror}") from None
        finally:
            self.closed = True
            try:
                self.f.close()
            except OSError:
                pass


# reader -----------------------------------------------------------------------
@dataclass
class Damage:
    offset: int
    reason: str
    resumed_at: int | None = None  # where the next good chunk was found

    def __str__(self) -> str:
        tail = f", recovered from byte {self.resumed_at}" if self.resumed_at is not None else ""
        return f"damaged at byte {self.offset}: {self.reason}{tail}"


@dataclass
class ReadStats:
    chunks: int = 0
    events: int = 0
    objects: int = 0
    complete: bool = False  # index and trailer found intact
    damage: list[Damage] = field(default_factory=list)

    def summary(self, path: str) -> str | None:
        """One line for the user when the file was not read whole, else None."""
        if self.complete and not self.damage:
            return None
        what = "; ".join(str(d) for d in self.damage) if self.damage else "no index: capture was not closed"
        return f"{path}: {what}; read {self.chunks} complete chunks ({self.events} events)"


class CaptureReader:
    """Reads a capture chunk by chunk; never raises past the header.

    Errors in the prelude or header raise CaptureError (nothing can be
    read). Anything after that is recorded in ``stats.damage`` and reading
    continues with the next intact chunk.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.f = open(path, "rb")
        except OSError as e:
            raise CaptureError(f"cannot read {path}: {e.strerror}") from None
        try:
            self.size = os.fstat(self.f.fileno()).st_size
            pre = self.f.read(PRELUDE.size)
            if len(pre) < PRELUDE.size or not pre.startswith(MAGIC[:6]):
                if pre[:1] == b"{":
                    raise CaptureError(f"{path}: a JSON Lines file, not a capture (use replay:{path})")
                raise CaptureError(f"{path}: not a vtrace capture (bad magic)")
            magic, major, minor, hlen, hcrc = PRELUDE.unpack(pre)
            if magic != MAGIC:
                raise CaptureError(f"{path}: not a vtrace capture (mangled magic: transferred as text?)")
            if major != FORMAT_MAJOR:
                raise CaptureError(f"{path}: capture format {major}.{minor}; this vtrace reads {FORMAT_MAJOR}.x")
            self.minor = minor
            if hlen > MAX_HEADER:
                raise CaptureError(f"{path}: damaged header (length {hlen})")
            body = self.f.read(hlen)
            if len(body) < hlen:
                raise CaptureError(f"{path}: truncated inside the header ({self.size} bytes)")
            if zlib.crc32(body) != hcrc:
                raise CaptureError(f"{path}: damaged header (checksum mismatch)")
            try:
                self.header = json.loads(body)
            except ValueError:
                raise CaptureError(f"{path}: damaged header (not JSON)") from None
            if not isinstance(self.header, dict):
                raise CaptureError(f"{path}: damaged header (not an object)")
            rec = self.header.get("record", {})
            if rec and [list(x) for x in rec.get("fields", [])] != [[n, t] for n, t in RECORD_FIELDS]:
                raise CaptureError(f"{path}: record layout differs from this vtrace's")
        except CaptureError:
            self.f.close()
            raise
        self.data_start = PRELUDE.size + hlen
        self.stats = ReadStats()
        self.index: dict | None = None
        self.dctx = zstandard.ZstdDecompressor()

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _resync(self, start: int) -> int | None:
        """Offset of the next chunk magic at or after ``start``, or None."""
        step = 1 << 20
        pos = start
        while pos < self.size:
            self.f.seek(pos)
            buf = self.f.read(step + len(CHUNK_MAGIC))
            i = buf.find(CHUNK_MAGIC)
            if i >= 0:
                return pos + i
            pos += step
        return None

    def chunks(self) -> Iterator[tuple[int, int, bytes]]:
        """(type, nrec, payload) for every intact chunk, in file order."""
        pos = self.data_start
        bad_at: int | None = None
        bad_reason = ""
        while pos < self.size:
            self.f.seek(pos)
            hdr = self.f.read(CHUNK.size)
            reason = None
            if hdr.startswith(TRAILER_MAGIC[:5]) and len(hdr) >= TRAILER.size:
                if pos + TRAILER.size == self.size and self.index is not None:
                    self.stats.complete = True  # footer intact; earlier damage stays listed
                    return
                reason = "unexpected trailer"
            elif len(hdr) < CHUNK.size:
                reason = f"truncated chunk header ({len(hdr)} of {CHUNK.size} bytes)"
            else:
                magic, ctype, codec, _, nrec, clen, ulen, crc = CHUNK.unpack(hdr)
                if magic != CHUNK_MAGIC:
                    reason = "bad chunk magic"
                elif codec != CODEC_ZSTD or ctype not in (T_EVENTS, T_OBJECTS, T_META, T_INDEX):
                    reason = f"unknown chunk type {ctype} / codec {codec}"
                elif clen > MAX_CHUNK_BYTES or ulen > MAX_CHUNK_BYTES or nrec > MAX_CHUNK_RECORDS:
                    reason = "implausible chunk size"
                elif pos + CHUNK.size + clen > self.size:
                    reason = (f"truncated chunk ({self.size - pos - CHUNK.size} of {clen} payload bytes)")
                else:
                    comp = self.f.read(clen)
                    if zlib.crc32(comp) != crc:
                        reason = "chunk checksum mismatch"
                    else:
                        try:
                            payload = self.dctx.decompress(comp, max_output_size=ulen)
                        except zstandard.ZstdError as e:
                            payload = None
                            reason = f"chunk does not decompress ({e})"
                        if payload is not None and len(payload) != ulen:
                            reason = "chunk length mismatch"
            if reason is None:
                if bad_at is not None:
                    self.stats.damage.append(Damage(bad_at, bad_reason, pos))
                    bad_at = None
                self.stats.chunks += 1
                if ctype == T_INDEX:
                    try:
                        self.index = json.loads(payload)
                    except ValueError:
                        self.index = None
                else:
                    yield ctype, nrec, payload
                pos += CHUNK.size + clen
                continue
            if bad_at is None:
                bad_at, bad_reason = pos, reason
            nxt = self._resync(pos + 1)
            if nxt is None:
                break
            pos = nxt
        if bad_at is not None:
            self.stats.damage.append(Damage(bad_at, bad_reason))

    def batches(self) -> Iterator[Batch]:
        """Batches of events; identities and probe status ride along."""
        objects: list[ObjectInfo] = []
        probes = None
        seen_damage = 0
        for ctype, nrec, payload in self.chunks():
            if ctype == T_OBJECTS:
                try:
                    objs = [ObjectInfo.from_json(d) for d in json.loads(payload)]
                except (ValueError, TypeError, AttributeError) as e:
                    self.stats.damage.append(Damage(-1, f"bad object chunk ({e})"))
                    continue
                objects.extend(objs)
                self.stats.objects += len(objs)
            elif ctype == T_META:
                try:
                    meta = json.loads(payload)
                    if "probes" in meta:
                        probes = tuple(ProbeStatus(**p) for p in meta["probes"])
                except (ValueError, TypeError) as e:
                    self.stats.damage.append(Damage(-1, f"bad meta chunk ({e})"))
            elif ctype == T_EVENTS:
                try:
                    ev = decode_events(payload, nrec)
                except CaptureError as e:
                    self.stats.damage.append(Damage(-1, str(e)))
                    continue
                self.stats.events += ev.size
                if self.minor < 1:  # 1.0 wrote a guest signal's unobserved free_descs as 0
                    ev["aux2"][(ev["kind"] == Kind.SIGNAL) & (ev["layer"] == Layer.VIRTIO_GUEST)] = UNOBSERVED
                # Events were lost before this batch: consumers that follow
                # state across events (the checker) must re-synchronise.
                gap = len(self.stats.damage) > seen_damage
                seen_damage = len(self.stats.damage)
                yield Batch(events=ev, t_end=int(ev["ts"][-1]) if ev.size else 0,
                            objects=tuple(objects), probes=probes, meta={"gap": True} if gap else {})
                objects, probes = [], None
        if objects or probes is not None:
            yield Batch(events=np.zeros(0, dtype=RECORD_DTYPE), t_end=0, objects=tuple(objects),
                        probes=probes)
        if self.index and self.index.get("ts_last"):
            # A quiet tail still counts as capture time.
            end = self.index.get("ts_end") or self.index["ts_last"]
            yield Batch(events=np.zeros(0, dtype=RECORD_DTYPE), t_end=int(end))
