"""Capture files: round trips, damage recovery, hostile input."""

import os
import stat
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtrace.capture import (CHUNK, MAGIC, PRELUDE, TRAILER, CaptureError, CaptureReader, CaptureWriter,
                            decode_events, encode_events)
from vtrace.events import RECORD_DTYPE
from vtrace.sources.sim import NS, SimConfig, SimSource


def sim_events(seconds=1.0, cfg="vms=2"):
    src = SimSource(SimConfig.parse(cfg), duration_ns=int(seconds * NS))
    bs = list(src.batches())
    return bs, np.concatenate([b.events for b in bs])


def write(path, bs, chunk=4096):
    w = CaptureWriter(str(path), {"source": {"source": "sim", "simulated": True}}, chunk_records=chunk)
    for b in bs:
        w.write_batch(b)
    w.close({"ts_end": bs[-1].t_end})
    return w


def read_all(path):
    r = CaptureReader(str(path))
    bs = list(r.batches())
    r.close()
    evs = [b.events for b in bs if b.events.size]
    return r, (np.concatenate(evs) if evs else np.zeros(0, RECORD_DTYPE)), bs


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    bs, ev = sim_events()
    p = tmp_path_factory.mktemp("cap") / "run.vtrace"
    write(p, bs)
    return p, bs, ev


def test_round_trip_is_exact(sample):
    p, bs, ev = sample
    r, got, rbs = read_all(p)
    assert got.tobytes() == ev.tobytes()
    assert r.stats.complete and not r.stats.damage and r.stats.summary(str(p)) is None
    assert {o.obj for b in rbs for o in b.objects} == {o.obj for o in bs[0].objects}
    assert rbs[-1].t_end == bs[-1].t_end  # the quiet tail is kept
    assert r.header["source"]["simulated"] is True and r.header["record"]["size"] == 48


def test_file_mode_is_0600_even_over_an_existing_file(tmp_path):
    p = tmp_path / "x.vtrace"
    p.write_text("old")
    os.chmod(p, 0o644)
    bs, _ = sim_events(0.1)
    write(p, bs)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_codec_handles_out_of_order_and_extremes():
    a = np.zeros(5, dtype=RECORD_DTYPE)
    a["ts"] = [5, 3, 2**64 - 1, 0, 7]
    a["obj"] = [2**64 - 1, 0, 1, 2**64 - 1, 3]
    a["arg"] = 2**64 - 1
    a["kind"] = [1, 2, 255, 0, 77]
    assert decode_events(encode_events(a), 5).tobytes() == a.tobytes()
    many = np.zeros(70000, dtype=RECORD_DTYPE)
    many["obj"] = np.arange(70000)  # > 65536 distinct objects: 4-byte index
    assert decode_events(encode_events(many), 70000).tobytes() == many.tobytes()


def test_truncation_at_every_chunk_keeps_every_complete_chunk(sample, tmp_path):
    p, _, ev = sample
    data = p.read_bytes()
    r = CaptureReader(str(p))
    list(r.batches())
    offsets = [c["offset"] for c in r.index["chunks"] if c["type"] == 1]
    counts = [c["nrec"] for c in r.index["chunks"] if c["type"] == 1]
    r.close()
    for i, off in enumerate(offsets):
        for cut in (off, off + 10, off + CHUNK.size + 3):
            t = tmp_path / "t.vtrace"
            t.write_bytes(data[:cut])
            rr, got, _ = read_all(t)
            assert got.size == sum(counts[:i])
            assert got.tobytes() == ev[: got.size].tobytes()
            assert not rr.stats.complete
            msg = rr.stats.summary(str(t))
            assert msg and "\n" not in msg and f"({got.size} events)" in msg


def test_missing_footer_is_reported(sample, tmp_path):
    p, _, ev = sample
    data = p.read_bytes()
    _, idx_off = TRAILER.unpack(data[-TRAILER.size:])
    t = tmp_path / "nofooter.vtrace"
    t.write_bytes(data[:idx_off])
    rr, got, _ = read_all(t)
    assert got.tobytes() == ev.tobytes()
    assert "no index" in rr.stats.summary(str(t))


def test_damage_in_the_middle_is_skipped_and_later_chunks_recovered(sample, tmp_path):
    p, _, ev = sample
    data = bytearray(p.read_bytes())
    r = CaptureReader(str(p))
    list(r.batches())
    chunks = [c for c in r.index["chunks"] if c["type"] == 1]
    r.close()
    victim = chunks[1]
    data[victim["offset"] + CHUNK.size + 5] ^= 0xFF  # flip a payload byte: CRC fails
    t = tmp_path / "bad.vtrace"
    t.write_bytes(bytes(data))
    rr, got, _ = read_all(t)
    assert got.size == ev.size - victim["nrec"]
    assert len(rr.stats.damage) == 1
    d = rr.stats.damage[0]
    assert d.offset == victim["offset"] and d.resumed_at == chunks[2]["offset"]
    assert "checksum" in d.reason
    assert rr.stats.complete  # the footer itself is intact...
    assert "checksum" in rr.stats.summary(str(t))  # ...but the damage is still reported


@pytest.mark.parametrize("content,needle", [
    (b"", "not a vtrace capture"),
    (b"hello world, this is not a capture at all", "not a vtrace capture"),
    (b"VTRACE\x00\r\n" + b"\0" * 40, "mangled magic"),
    (PRELUDE.pack(MAGIC, 9, 0, 2, 0) + b"{}", "format 9.0"),
    (PRELUDE.pack(MAGIC, 1, 0, 100, 0) + b"{}", "truncated inside the header"),
    (PRELUDE.pack(MAGIC, 1, 0, 2, 12345) + b"{}", "checksum"),
    (PRELUDE.pack(MAGIC, 1, 0, 1 << 30, 0), "damaged header"),
    (b'{"type": "event"}\n', "JSON Lines"),
])
def test_foreign_and_broken_headers(tmp_path, content, needle):
    t = tmp_path / "f"
    t.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        CaptureReader(str(t))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unwritable_output(tmp_path):
    with pytest.raises(CaptureError, match="cannot write"):
        CaptureWriter(str(tmp_path / "no" / "such" / "dir.vtrace"), {})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_damage_never_raises_past_the_header(sample, tmp_path, data):
    p, _, ev = sample
    raw = bytearray(p.read_bytes())
    r0 = CaptureReader(str(p))
    start = r0.data_start
    r0.close()
    op = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(start, len(raw)))]
    elif op == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(start, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    else:
        i = data.draw(st.integers(start, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=200))
    t = tmp_path / "fuzz.vtrace"
    t.write_bytes(bytes(raw))
    rr, got, _ = read_all(t)
    # whatever survives is a prefix-consistent subset: every event read is a real one
    if got.size:
        assert np.isin(got["ts"], ev["ts"]).all()
    assert got.size <= ev.size


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_give_a_clean_error(tmp_path_factory, blob):
    t = tmp_path_factory.mktemp("rb") / "x"
    t.write_bytes(blob)
    try:
        r = CaptureReader(str(t))
    except CaptureError as e:
        assert "\n" not in str(e)
        return
    list(r.batches())  # a lucky valid header: the body must not raise either
    r.close()


def test_random_payload_after_valid_header_is_damage_not_crash(tmp_path):
    rng = np.random.default_rng(3)
    body = b"{}"
    for i in range(50):
        junk = rng.bytes(int(rng.integers(1, 3000)))
        # sometimes make it look like a chunk
        if i % 3 == 0:
            junk = b"VTCK" + struct.pack("<BBHIIII", 1, 1, 0, 5, 10, 240, 0) + junk
        t = tmp_path / f"j{i}"
        t.write_bytes(PRELUDE.pack(MAGIC, 1, 0, len(body), __import__("zlib").crc32(body)) + body + junk)
        rr, got, _ = read_all(t)
        assert got.size == 0 and rr.stats.damage
