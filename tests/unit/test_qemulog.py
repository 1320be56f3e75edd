"""QemuLogSource and `vtrace import qemu` on hand-written QEMU trace logs.

Line formats are QEMU's (hw/virtio/trace-events, log backend with -msg
timestamp=on: ``TID@SEC.USEC:name args``). The vmlab tier runs the same
importer on a real log from Debian's QEMU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vtrace.check import Checker
from vtrace.cli import cli
from vtrace.events import NO_QUEUE, UNOBSERVED, Kind, Layer
from vtrace.jsonl import event_dicts
from vtrace.sources import SourceError, open_source
from vtrace.sources.qemulog import QemuLogError, QemuLogSource, parse_args

BLK, BVQ = "0x5600000d600", "0x7f0000b010"
NET, RX, TX, CQ = "0x5600000a950", "0x7f00004010", "0x7f000040a8", "0x7f00004140"


def _log(tmp_path, body: str, name="q.log"):
    lines, t = [], 1_700_000_000_000_000  # microseconds
    for ln in body.strip().splitlines():
        ln = ln.strip()
        if ln.startswith("!"):  # written as is (malformed or untimed lines)
            lines.append(ln[1:])
            continue
        t += 10
        lines.append(f"4242@{t // 1_000_000}.{t % 1_000_000:06d}:{ln}")
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


# A virtio-blk device reset and brought up, then two reads in flight together.
BLK_LOG = f"""
virtio_set_status vdev {BLK} val 0
virtio_set_status vdev {BLK} val 15
virtio_queue_notify vdev {BLK} n 0 vq {BVQ}
virtqueue_alloc_element elem 0xe1 size 240 in_num 2 out_num 1
virtqueue_pop vq {BVQ} elem 0xe1 in_num 2 out_num 1
virtqueue_pop vq {BVQ} elem 0xe2 in_num 3 out_num 1
virtio_blk_handle_read vdev {BLK} req 0xe1 sector 0 nsectors 8
virtio_blk_req_complete vdev {BLK} req 0xe2 status 0
virtqueue_fill vq {BVQ} elem 0xe2 len 8193 idx 0
virtqueue_flush vq {BVQ} count 1
virtio_notify_irqfd vdev {BLK} vq {BVQ}
virtqueue_fill vq {BVQ} elem 0xe1 len 4097 idx 0
virtqueue_fill vq {BVQ} elem 0xe1 len 4097 idx 1
virtqueue_flush vq {BVQ} count 2
virtio_notify vdev {BLK} vq {BVQ}
virtio_pci_notify vec 0x1
"""


def _events(src):
    return np.concatenate([b.events for b in src.batches()])


def test_parse_args_reads_both_argument_styles():
    assert parse_args("vq 0x1 elem 0x2 len 3 idx 0") == {"vq": "0x1", "elem": "0x2", "len": "3", "idx": "0"}
    assert parse_args("dev: 0x1 index: 0 num: 7") == {"dev": "0x1", "index": "0", "num": "7"}


def test_blk_log_becomes_fetch_used_kick_signal_reset(tmp_path):
    src = QemuLogSource(str(_log(tmp_path, BLK_LOG)))
    ev = _events(src)
    k = ev["kind"].tolist()
    assert k == [Kind.RESET, Kind.KICK, Kind.FETCH, Kind.FETCH, Kind.USED, Kind.SIGNAL, Kind.USED, Kind.USED,
                 Kind.SIGNAL]
    f = ev[ev["kind"] == Kind.FETCH]
    assert f["id"].tolist() == [0, 1]                     # heads numbered per element
    assert f["aux2"].tolist() == [3, 4]                   # in_num + out_num
    assert (f["len"] == UNOBSERVED).all() and (f["aux"] == UNOBSERVED).all()
    assert f["arg"].tolist() == [1, 2]                    # pops since reset
    u = ev[ev["kind"] == Kind.USED]
    assert u["id"].tolist() == [1, 0, 0]
    assert u["len"].tolist() == [8193, 4097, 4097]
    assert u["arg"].tolist() == [1, 2, 3]                 # used idx after each entry (base + idx + 1)
    s = ev[ev["kind"] == Kind.SIGNAL]
    assert s["arg"].tolist() == [1, 3] and (s["id"] == UNOBSERVED).all()
    assert (ev["kind"] == Kind.KICK).sum() == 1 and ev["arg"][ev["kind"] == Kind.KICK][0] == UNOBSERVED
    assert ev["ts"][0] == 1_700_000_000_000_010_000       # microseconds -> ns
    assert set(ev["layer"].tolist()) == {Layer.QEMU} and set(ev["pid"].tolist()) == {4242}
    assert src.stats.filled_again == 1                    # elem 0xe1 was filled twice
    assert src.stats.ignored == {"virtio_pci_notify": 1}
    dev = {o.device: o for o in src.objects if o.queue == NO_QUEUE}
    assert dev["vdev0"].dev_type == "blk"
    q = [o for o in src.objects if o.queue != NO_QUEUE]
    assert [(o.obj, o.queue, o.name, o.dev_type) for o in q] == [(int(BVQ, 16), 0, "req0", "blk")]
    assert src.vm == "qemu-4242"


def test_checker_finds_the_second_fill_and_nothing_else(tmp_path):
    ck = Checker()
    for b in QemuLogSource(str(_log(tmp_path, BLK_LOG))).batches():
        ck.feed(b)
    ck.finish()
    assert [d.rule for d in ck.divergences] == ["used-twice"]
    assert ck.tally["used-len-exceeds-writable"].checked == 0  # lengths of chains are not traced
    assert ck.tally["kick-stall"].unchecked == 1 and ck.tally["kick-stall"].why.startswith("the kick's avail")


NET_LOG = f"""
virtio_set_status vdev {NET} val 0
virtio_queue_notify vdev {NET} n 0 vq {RX}
virtio_queue_notify vdev {NET} n 1 vq {TX}
virtqueue_pop vq {RX} elem 0xa1 in_num 1 out_num 0
virtqueue_fill vq {RX} elem 0xa1 len 0 idx 0
virtqueue_flush vq {RX} count 1
virtio_notify vdev {NET} vq {RX}
virtqueue_pop vq {TX} elem 0xb1 in_num 0 out_num 1
virtqueue_fill vq {TX} elem 0xb1 len 0 idx 0
virtqueue_flush vq {TX} count 1
virtqueue_pop vq {CQ} elem 0xc1 in_num 1 out_num 2
virtqueue_fill vq {CQ} elem 0xc1 len 1 idx 0
virtqueue_flush vq {CQ} count 1
"""


def test_net_types_name_queues_and_rx_zero_length_is_found(tmp_path):
    log = _log(tmp_path, NET_LOG)
    # The control queue never kicked or signalled (a polled queue): it is
    # placed by address next to its device's other queues.
    src = QemuLogSource(str(log), types={"vdev0": "net"})
    names = {o.queue: o.name for o in src.objects if o.queue != NO_QUEUE}
    assert names == {0: "rx0", 1: "tx0", 2: "ctrl"}
    assert src.stats.placed_by_address == 1 and src.stats.inferred_index == 1
    ck = Checker()
    for b in src.batches():
        ck.feed(b)
    ck.finish()
    # RX used.len 0 is the zero-length completion the spec forbids; TX len 0
    # and the control queue's 1-byte ack are fine.
    assert [(d.rule, d.where) for d in ck.divergences] == [("used-len-short", "qemu-4242/vdev0/rx0")]


def test_unknown_types_leave_device_rules_unexercised_and_the_summary_says_how_to_type(tmp_path):
    src = QemuLogSource(str(_log(tmp_path, NET_LOG)))
    list(src.batches())
    assert {o.dev_type for o in src.objects} == {"unknown"}
    text = "\n".join(src.summary_lines())
    assert "-t vdev0=net" in text and "virtqueue_pop 3" in text
    assert "inferred from address order" in text


def test_type_by_pointer_and_bare_type(tmp_path):
    log = _log(tmp_path, NET_LOG + BLK_LOG)
    a = QemuLogSource(str(log), types={NET: "net"})
    b = QemuLogSource(str(log), types={"*": "net"})
    for s in (a, b):
        assert {o.device: o.dev_type for o in s.objects} == {"vdev0": "net", "vdev1": "blk"}
    with pytest.raises(QemuLogError, match="no device vdev7"):
        QemuLogSource(str(log), types={"vdev7": "net"})
    with pytest.raises(QemuLogError, match="unknown device type 'nic'"):
        QemuLogSource(str(log), types={"vdev0": "nic"})


VDPA = "0x55000000aa00"
VDPA_LOG = f"""
vhost_vdpa_get_device_id dev: {VDPA} device_id 1
vhost_vdpa_set_features dev: {VDPA} features: 0x1300000000
vhost_vdpa_suspend dev: {VDPA}
vhost_vdpa_get_vring_base dev: {VDPA} index: 0 num: 17
vhost_vdpa_get_vring_base dev: {VDPA} index: 1 num: 40
vhost_vdpa_dev_start dev: {VDPA} started: 0
vhost_vdpa_set_vring_base dev: {VDPA} index: 0 num: 17
vhost_vdpa_set_vring_base dev: {VDPA} index: 1 num: 39
vhost_vdpa_dev_start dev: {VDPA} started: 1
"""


def test_vdpa_suspend_and_vring_bases(tmp_path):
    src = QemuLogSource(str(_log(tmp_path, VDPA_LOG)))
    ev = _events(src)
    assert ev["kind"].tolist() == [Kind.SUSPEND, Kind.VRING_BASE_GET, Kind.VRING_BASE_GET,
                                   Kind.VRING_BASE_SET, Kind.VRING_BASE_SET, Kind.RESUME]
    assert ev["id"][1:5].tolist() == [17, 40, 17, 39]
    objs = {o.obj: o for o in src.objects}
    dev = objs[int(VDPA, 16)]
    assert (dev.device, dev.dev_type, dev.features, dev.layer) == ("vdpa0", "net", 0x1300000000, Layer.VHOST)
    assert sorted((o.queue, o.name) for o in src.objects if o.queue != NO_QUEUE) == [(0, "rx0"), (1, "tx0")]
    ck = Checker()
    for b in src.batches():
        ck.feed(b)
    ck.finish()
    # Queue 1 restarts one short of where it stopped with nothing known in
    # flight: a base mismatch. The in-flight set at suspend is unknown (no
    # buffer events), so that rule says so rather than passing.
    assert [d.rule for d in ck.divergences] == ["vring-base-mismatch"]
    assert ck.tally["inflight-at-stop"].checked == 0 and ck.tally["inflight-at-stop"].unchecked == 2


def test_malformed_lines_are_counted_and_the_rest_imported(tmp_path):
    body = BLK_LOG + "\n!this is not a trace line\nvirtqueue_pop vq 0x7f0000b010 elem zz in_num 1 out_num 0\n" \
        + f"!4242@1700000001.000000:virtqueue_fill vq {BVQ} elem 0xe2 le"  # cut mid-line
    src = QemuLogSource(str(_log(tmp_path, body)))
    ev = _events(src)
    assert (ev["kind"] == Kind.FETCH).sum() == 2
    assert src.stats.bad == 3
    assert "3 malformed lines skipped" in src.damage() and "line 17" in src.damage()


def test_untimed_logs_need_line_time(tmp_path):
    body = "\n".join("!" + ln.strip() for ln in BLK_LOG.strip().splitlines())
    log = _log(tmp_path, body)
    with pytest.raises(QemuLogError, match="-msg timestamp=on"):
        QemuLogSource(str(log))
    src = QemuLogSource(str(log), line_time=True)
    ev = _events(src)
    assert ev["ts"][0] == 1000 and (np.diff(ev["ts"].astype(np.int64)) > 0).all()


def test_backwards_timestamps_keep_file_order(tmp_path):
    log = tmp_path / "q.log"
    log.write_text(f"1@10.000050:virtio_queue_notify vdev {BLK} n 0 vq {BVQ}\n"
                   f"2@10.000040:virtqueue_pop vq {BVQ} elem 0x1 in_num 1 out_num 1\n")
    src = QemuLogSource(str(log))
    ev = _events(src)
    assert ev["kind"].tolist() == [Kind.KICK, Kind.FETCH] and ev["ts"][0] == ev["ts"][1]
    assert src.stats.clamped == 1


def test_no_virtio_events_is_an_error(tmp_path):
    log = tmp_path / "q.log"
    log.write_text("1@1.000001:vhost_commit Started: 1 Changed: 1\n")
    with pytest.raises(QemuLogError, match="no virtio trace events"):
        QemuLogSource(str(log))


def test_kick_without_avail_idx_is_omitted_in_jsonl(tmp_path):
    ev = _events(QemuLogSource(str(_log(tmp_path, BLK_LOG))))
    kick = next(d for d in event_dicts(ev) if d["kind"] == "kick")
    assert "avail_idx" not in kick


def test_source_spec(tmp_path):
    src, _ = open_source(f"qemu:{_log(tmp_path, BLK_LOG)}")
    assert src.info["source"] == "qemu-log"
    with pytest.raises(SourceError, match="qemu:FILE"):
        open_source("qemu:")
    with pytest.raises(SourceError, match="cannot read"):
        open_source(f"qemu:{tmp_path}/missing.log")


def test_cli_import_check_report(tmp_path):
    log = _log(tmp_path, NET_LOG + BLK_LOG, name="guest.log")
    r = CliRunner().invoke(cli, ["import", "qemu", str(log), "-t", "vdev0=net", "--vm", "web1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "guest.vtrace"
    assert out.exists()
    assert "vdev0 " in r.output and "net (--type)" in r.output and "blk (virtio_blk_" in r.output
    assert "fills of elements that were already filled" in r.output
    r = CliRunner().invoke(cli, ["import", "qemu", str(log)])
    assert r.exit_code == 2 and "exists (use --force" in r.output
    r = CliRunner().invoke(cli, ["check", str(out), "-j"])
    assert r.exit_code == 1
    res = json.loads(r.output)
    assert sorted({d["rule"] for d in res["divergences"]}) == ["used-len-short", "used-twice"]
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0 and "web1" in r.output and "rx0" in r.output


@pytest.mark.parametrize("args,msg", [
    (["-t", "=net"], "is not DEV=TYPE"),
    (["-t", "vdev0=bogus"], "unknown device type 'bogus'"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, msg):
    log = _log(tmp_path, BLK_LOG)
    r = CliRunner().invoke(cli, ["import", "qemu", str(log), "-o", str(tmp_path / "x.vtrace"), *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_cli_missing_file(tmp_path):
    r = CliRunner().invoke(cli, ["import", "qemu", str(tmp_path / "nope.log")])
    assert r.exit_code == 2 and "cannot read" in r.output and len(r.output.strip().splitlines()) == 1


def test_aggregator_counts_unobserved_lengths_as_no_bytes(tmp_path):
    from vtrace.aggregate import Aggregator
    src = QemuLogSource(str(_log(tmp_path, BLK_LOG)))
    agg = Aggregator()
    agg.set_source(src.info)
    for b in src.batches():
        agg.feed(b)
    q = [r for r in agg.snapshot().queues if r.device == "vdev0"]
    assert len(q) == 1
    assert q[0].used_bytes_total == 8193 + 4097 + 4097  # used.len is traced
    assert q[0].read_bytes_total == 0                   # readable bytes are not: nothing, not 2 x 4 GiB
