import io
import json

import numpy as np

from vtrace.events import Kind
from vtrace.jsonl import JsonlReader, parse_event, write_jsonl
from vtrace.sources.replay import ReplaySource
from vtrace.sources.sim import NS, SimConfig, SimSource


def test_jsonl_round_trip_exact(tmp_path):
    src = SimSource(SimConfig.parse("vms=1"), duration_ns=NS // 2)
    bs = list(src.batches())
    ev = np.concatenate([b.events for b in bs])
    p = tmp_path / "t.jsonl"
    with open(p, "w") as f:
        n = write_jsonl(f, {"source": src.info}, bs)
    assert n == ev.size
    r = ReplaySource(str(p))
    got = np.concatenate([b.events for b in r.batches() if b.events.size])
    assert got.tobytes() == ev.tobytes()
    assert r.damage() is None


def test_names_follow_kind_fields():
    buf = io.StringIO()
    a = np.zeros(1, dtype=__import__("vtrace.events", fromlist=["RECORD_DTYPE"]).RECORD_DTYPE)
    a["kind"], a["id"], a["len"], a["queue"] = Kind.USED, 5, 1514, 0
    from vtrace.events import Batch
    write_jsonl(buf, {}, [Batch(events=a, t_end=0)])
    line = json.loads(buf.getvalue().splitlines()[1])
    assert line["kind"] == "used" and line["head"] == 5 and line["used_len"] == 1514
    assert parse_event(line)[4:6] == (5, 1514)


def test_hand_written_trace_with_bad_lines(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text("\n".join([
        json.dumps({"type": "header", "format": "vtrace-jsonl", "version": 1}),
        json.dumps({"type": "object", "obj": 4096, "vm": "vm1", "device": "blk0", "queue": 0, "name": "req.0"}),
        json.dumps({"ts": 200, "kind": "used", "layer": "vhost", "obj": "0x1000", "queue": 0, "head": 1,
                    "used_len": 4097}),
        json.dumps({"ts": 100, "kind": "fetch", "layer": "vhost", "obj": 4096, "queue": 0, "head": 1}),
        "{not json",
        json.dumps({"ts": 300, "kind": "fetch", "obj": 4096, "bogus": 1}),
        json.dumps({"ts": 300, "kind": "teleport", "obj": 4096}),
        json.dumps({"ts": -1, "kind": "kick", "obj": 4096}),
        '{"ts": 400, "kind": "ki',  # truncated last line
    ]) + "\n")
    r = JsonlReader(str(p))
    bs = list(r.batches())
    ev = np.concatenate([b.events for b in bs])
    assert ev.size == 2 and ev["ts"].tolist() == [100, 200]  # sorted
    assert r.stats.bad == 5
    msg = r.stats.summary(str(p))
    assert "5 bad lines" in msg and "line 6" in msg and "\n" not in msg
