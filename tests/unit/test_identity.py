"""vhost device identity without a kernel: numbering per VM in open order, a
multiqueue NIC's queue pairs joined by their tap, backends (tap, guest CID)
learnt after the queues were named, devices set up before vtrace attached;
and the backend label through every output (capture, aggregator, report,
stat -j, top, exporter, checker).

The identity maps are fakes of what probes/vhost.bpf.c keeps (vq_info,
dev_info, dev_gen), the VMMs' /proc a tree of fdinfo files, as tun's
show_fdinfo prints them."""

from __future__ import annotations

import dataclasses
import json
import random
from types import SimpleNamespace

import numpy as np

from vtrace.aggregate import Aggregator
from vtrace.capture import CaptureReader, CaptureWriter
from vtrace.events import RECORD_DTYPE, Batch, Kind, Layer, ObjectInfo, make
from vtrace.live.identity import Identity, taps_of

KICK = {0x1000: ("handle_rx_kick", "vhost_net"), 0x1100: ("handle_tx_kick", "vhost_net"),
        0x2000: ("vhost_vsock_handle_rx_kick", "vhost_vsock"), 0x2100: ("vhost_vsock_handle_tx_kick", "vhost_vsock")}
NET, VSOCK = (0x1000, 0x1100), (0x2000, 0x2100)


class Syms:
    def name_at(self, addr):
        fn = KICK.get(addr)
        return SimpleNamespace(name=fn[0], module=fn[1]) if fn else None


class Map:
    """A bcc hash as Identity reads it: items() of (key, value) in hash order (shuffled)."""

    Key = int

    def __init__(self):
        self.rows: dict[int, SimpleNamespace] = {}

    def __delitem__(self, key):
        del self.rows[key]

    def items(self):
        rows = list(self.rows.items())
        random.Random(len(rows)).shuffle(rows)
        return [(SimpleNamespace(value=k), v) for k, v in rows]


class Gen:
    Key = int

    def __init__(self):
        self.n = 0

    def __getitem__(self, key):
        return SimpleNamespace(value=self.n)


class Host:
    """VMMs with vhost devices: what vhost.bpf.c's maps and /proc say of them."""

    def __init__(self, proc):
        self.proc = proc
        self.bpf = {b"vq_info": Map(), b"dev_info": Map(), b"dev_gen": Gen()}
        self.next = 0xFFFF888100000000
        self.t = 1_000

    def vmm(self, pid: int, name: str) -> None:
        d = self.proc / str(pid)
        (d / "fdinfo").mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join([b"qemu-system-x86_64", b"-name", f"guest={name}".encode()]) + b"\0")
        for fd in (0, 1, 2):
            (d / "fdinfo" / str(fd)).write_text("pos:\t0\nflags:\t02\nmnt_id:\t1\n")

    def tap(self, pid: int, fd: int, ifname: str) -> None:
        (self.proc / str(pid) / "fdinfo" / str(fd)).write_text(f"pos:\t0\nflags:\t04002\nmnt_id:\t15\niff:\t{ifname}\n")

    def open(self, pid: int, kicks=NET, *, owned: bool = True) -> tuple[int, list[int]]:
        """A vhost device the VMM opens (and owns: SET_OWNER, unless vtrace
        attached after); returns its address and queue addresses."""
        self.t += 1_000
        dev = self.next
        self.next += 0x10000
        if owned:
            self.changed(dev, pid, owned_ns=self.t)
        return dev, [dev + 0x1000 * (i + 1) for i in range(len(kicks))]

    def changed(self, dev: int, tgid: int, **kw) -> None:
        info = self.bpf[b"dev_info"].rows
        row = info.get(dev) or SimpleNamespace(owned_ns=0, backend_fd=-1, fd_tgid=0, tgid=tgid, pid=tgid, guest_cid=0)
        for k, v in kw.items():
            setattr(row, k, v)
        info[dev] = row
        self.bpf[b"dev_gen"].n += 1

    def queues_seen(self, pid: int, dev: int, vqs: list[int], kicks=NET, cid: int = 0) -> None:
        """The device's queues touched (vq_seen): by its vhost worker."""
        for i, (vq, kick) in enumerate(zip(vqs, kicks)):
            self.t += 10
            self.bpf[b"vq_info"].rows[vq] = SimpleNamespace(
                dev=dev, handle_kick=kick, features=1 << 32, first_ns=self.t, index=i, num=256, tgid=999,
                guest_cid=cid, comm=f"vhost-{pid}".encode())


def columns(objs, layer=Layer.VHOST):
    o = np.array(objs, dtype=np.uint64)
    return o, np.full(o.size, int(layer), np.uint8), np.zeros(o.size, np.uint32), np.zeros(o.size, np.uint8)


NONE = columns([])


def named(infos) -> dict[int, tuple]:
    return {i.obj: (i.vm, i.device, i.name, i.queue, i.backend) for i in infos}


def ids_for(h: Host) -> Identity:
    return Identity("host", Syms(), loaded=lambda: [("vhost", h.bpf)], proc=str(h.proc))


def test_devices_are_numbered_per_vm_and_type_in_the_order_the_vmm_opened_them(tmp_path):
    """Two VMs, each with a NIC and a vsock device: each VM's NIC is its net0 and
    its vsock its vsock0 (not a host-wide count), whatever order the kernel's
    hash hands the queues out in; the second NIC a VM opened is net1 even when
    its queues were seen first."""
    h = Host(tmp_path)
    h.vmm(100, "web1")
    h.vmm(200, "db1")
    web_nic, web_q = h.open(100)
    db_nic, db_q = h.open(200)
    web_vs, web_vsq = h.open(100, VSOCK)
    db_vs, db_vsq = h.open(200, VSOCK)
    web_nic2, web_q2 = h.open(100)
    h.queues_seen(100, web_nic2, web_q2)  # the second NIC carries traffic first
    for pid, dev, vqs, kicks, cid in ((100, web_nic, web_q, NET, 0), (200, db_nic, db_q, NET, 0),
                                      (100, web_vs, web_vsq, VSOCK, 3), (200, db_vs, db_vsq, VSOCK, 4)):
        h.queues_seen(pid, dev, vqs, kicks, cid)
    got = named(ids_for(h).objects(*columns(web_q + db_q + web_vsq + db_vsq + web_q2)))
    assert [got[q][:4] for q in web_q] == [("web1", "net0", "rx0", 0), ("web1", "net0", "tx0", 1)]
    assert [got[q][:4] for q in web_q2] == [("web1", "net1", "rx0", 0), ("web1", "net1", "tx0", 1)]
    assert [got[q][:3] for q in db_q] == [("db1", "net0", "rx0"), ("db1", "net0", "tx0")]
    # vhost-vsock's CID read from its struct vhost_vsock when the queue was first seen
    assert [got[q] for q in web_vsq] == [("web1", "vsock0", "rx", 0, "cid:3"), ("web1", "vsock0", "tx", 1, "cid:3")]
    assert {got[q][1:3] + (got[q][4],) for q in db_vsq} == {("vsock0", "rx", "cid:4"), ("vsock0", "tx", "cid:4")}


def test_a_multiqueue_nic_is_one_device_joined_by_its_tap(tmp_path):
    """QEMU's -netdev tap,queues=2,vhost=on opens /dev/vhost-net once per queue
    pair: two vhost devices serving one tap are one NIC, rx0/tx0 then rx1/tx1
    (virtio-net's queues 0-3) in open order; a second NIC on another tap is net1."""
    h = Host(tmp_path)
    h.vmm(300, "web2")
    h.tap(300, 20, "tap0")
    pair0, q0 = h.open(300)
    h.tap(300, 22, "tap0")  # the same interface again: its second queue
    pair1, q1 = h.open(300)
    h.tap(300, 24, "tap1")
    nic2, q2 = h.open(300)
    for dev, vqs, fd in ((nic2, q2, 24), (pair1, q1, 22), (pair0, q0, 20)):
        h.queues_seen(300, dev, vqs)
        h.changed(dev, 300, backend_fd=fd, fd_tgid=300)
    got = named(ids_for(h).objects(*columns(q0 + q1 + q2)))
    assert [got[q] for q in q0 + q1] == [("web2", "net0", "rx0", 0, "tap0"), ("web2", "net0", "tx0", 1, "tap0"),
                                        ("web2", "net0", "rx1", 2, "tap0"), ("web2", "net0", "tx1", 3, "tap0")]
    assert [got[q] for q in q2] == [("web2", "net1", "rx0", 0, "tap1"), ("web2", "net1", "tx0", 1, "tap1")]
    assert taps_of(300, str(tmp_path)) == ["tap0", "tap0", "tap1"]


def test_a_backend_set_after_the_queues_were_named_describes_them_again(tmp_path):
    """QEMU sets a NIC's rings up, then its backend (vhost_net_start_one): an
    identity read in between names the queues without a tap. The SET_BACKEND
    (dev_gen moved) describes them again, with no new object in the batch; the
    second queue pair, provisionally a NIC of its own, joins the first. The
    aggregator takes the new labels on the same counters."""
    h = Host(tmp_path)
    h.vmm(400, "web3")
    h.tap(400, 30, "tap7")
    h.tap(400, 31, "tap7")
    pair0, q0 = h.open(400)
    pair1, q1 = h.open(400)
    h.queues_seen(400, pair0, q0)
    h.queues_seen(400, pair1, q1)
    ids = ids_for(h)
    first = ids.objects(*columns(q0 + q1))
    assert [(i.device, i.name, i.backend) for i in first] == [("net0", "rx0", ""), ("net0", "tx0", ""),
                                                              ("net1", "rx0", ""), ("net1", "tx0", "")]
    agg = Aggregator()
    agg.feed(Batch(events=make([dict(kind=int(Kind.FETCH), ts=10, obj=q, queue=i % 2, layer=int(Layer.VHOST),
                                     id=1) for i, q in enumerate(q0 + q1)]), t_end=10, objects=tuple(first)))
    assert ids.objects(*NONE) == []  # nothing changed: dev_info not read again
    h.changed(pair0, 400, backend_fd=30, fd_tgid=400)
    h.changed(pair1, 400, backend_fd=31, fd_tgid=400)
    again = ids.objects(*NONE)
    assert named(again) == {q0[0]: ("web3", "net0", "rx0", 0, "tap7"), q0[1]: ("web3", "net0", "tx0", 1, "tap7"),
                            q1[0]: ("web3", "net0", "rx1", 2, "tap7"), q1[1]: ("web3", "net0", "tx1", 3, "tap7")}
    agg.feed(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=20, objects=tuple(again)))
    snap = agg.snapshot(close_interval=False)
    rows = sorted((q.device, q.name, q.backend, q.fetch_total) for q in snap.queues)
    assert rows == [("net0", n, "tap7", 1) for n in ("rx0", "rx1", "tx0", "tx1")]
    # a later SET_BACKEND whose fd is closed before vtrace reads it: the tap it knew stays
    h.changed(pair0, 400, backend_fd=33, fd_tgid=400)
    assert ids.objects(*NONE) == []


def test_a_device_owned_from_another_thread_of_the_vmm(tmp_path):
    """vhost names its worker after the thread that took the device
    (vhost-<pid>); dev_info keeps that thread as well as the VMM's tgid, so
    its SET_OWNER and SET_BACKEND still count when that was not the main thread."""
    h = Host(tmp_path)
    h.vmm(700, "web4")
    h.tap(700, 50, "tap4")
    dev, vqs = h.open(700)
    h.changed(dev, 700, pid=701, backend_fd=50, fd_tgid=700)
    h.queues_seen(701, dev, vqs)
    got = named(ids_for(h).objects(*columns(vqs)))
    assert [got[q][1:] for q in vqs] == [("net0", "rx0", 0, "tap4"), ("net0", "tx0", 1, "tap4")]


def test_devices_set_up_before_vtrace_attached(tmp_path):
    """No SET_OWNER or SET_BACKEND seen: devices come first, in the order their
    queues were first seen; a NIC's tap comes from the VMM's fd table when
    that is unambiguous (one tap, an fd per queue pair), else stays unknown;
    a vsock device's CID is read from its struct vhost_vsock all the same."""
    h = Host(tmp_path)
    h.vmm(500, "old1")
    h.tap(500, 40, "vnet0")
    h.tap(500, 41, "vnet0")
    h.vmm(600, "old2")
    h.tap(600, 40, "vnet1")
    h.tap(600, 41, "vnet2")
    a0, qa0 = h.open(500, owned=False)
    a1, qa1 = h.open(500, owned=False)
    vs, qvs = h.open(500, VSOCK, owned=False)
    h.queues_seen(500, a0, qa0)
    h.queues_seen(500, vs, qvs, VSOCK, cid=9)
    h.queues_seen(500, a1, qa1)
    b0, qb0 = h.open(600, owned=False)
    b1, qb1 = h.open(600, owned=False)
    h.queues_seen(600, b0, qb0)
    h.queues_seen(600, b1, qb1)
    late, qlate = h.open(500)  # hot-plugged after vtrace attached: after every older device
    h.queues_seen(500, late, qlate)
    got = named(ids_for(h).objects(*columns(qa0 + qa1 + qvs + qb0 + qb1 + qlate)))
    assert [got[q][1:] for q in qa0 + qa1] == [("net0", "rx0", 0, "vnet0"), ("net0", "tx0", 1, "vnet0"),
                                              ("net0", "rx1", 2, "vnet0"), ("net0", "tx1", 3, "vnet0")]
    assert [got[q][1:] for q in qvs] == [("vsock0", "rx", 0, "cid:9"), ("vsock0", "tx", 1, "cid:9")]
    assert [got[q][1:] for q in qlate] == [("net1", "rx0", 0, ""), ("net1", "tx0", 1, "")]
    # two taps, two devices: which is which the fd table cannot say
    assert [got[q][1:] for q in qb0 + qb1] == [("net0", "rx0", 0, ""), ("net0", "tx0", 1, ""),
                                              ("net1", "rx0", 0, ""), ("net1", "tx0", 1, "")]


def test_the_backend_survives_json_and_capture_files_and_old_files_load(tmp_path):
    info = ObjectInfo(obj=0xFFFF888100001000, vm="web1", device="net0", dev_type="net", queue=0, name="rx0",
                      size=256, pid=10, backend="tap0")
    assert ObjectInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    old = {k: v for k, v in info.to_json().items() if k != "backend"}
    assert ObjectInfo.from_json(old).backend == "" and "backend" not in ObjectInfo.from_json(old).to_json()
    p = tmp_path / "run.vtrace"
    w = CaptureWriter(str(p), {"source": {"source": "live"}})
    bare = dataclasses.replace(info, backend="")
    w.write_batch(Batch(events=make([dict(kind=int(Kind.FETCH), ts=5, obj=info.obj, layer=int(Layer.VHOST), id=0)]),
                        t_end=5, objects=(bare,)))
    w.write_batch(Batch(events=np.zeros(0, RECORD_DTYPE), t_end=9, objects=(info,)))  # described again
    w.close({"ts_end": 9})
    agg = Aggregator()
    r = CaptureReader(str(p))
    for b in r.batches():
        agg.feed(b)
    r.close()
    (q,) = agg.snapshot(close_interval=False).queues
    assert (q.device, q.name, q.backend, q.fetch_total) == ("net0", "rx0", "tap0", 1)


def _snapshot_with_backends():
    from tests.unit.helpers import DEV, Q0, Q1, batch, ev
    objs = (ObjectInfo(obj=DEV, vm="vm1", device="net0", dev_type="net", layer=Layer.VHOST, pid=10),
            ObjectInfo(obj=Q0, vm="vm1", device="net0", dev_type="net", queue=0, name="rx0", size=8,
                       layer=Layer.VHOST, pid=10, backend="tap0"),
            ObjectInfo(obj=Q1, vm="vm1", device="net0", dev_type="net", queue=1, name="tx0", size=8,
                       layer=Layer.VHOST, pid=10, backend="tap0"))
    agg = Aggregator()
    agg.feed(batch([ev(Kind.FETCH, 100, Q1, id=3), ev(Kind.USED, 200, Q1, id=3, len=0)], objects=objs))
    return agg


def test_the_backend_is_shown_by_report_stat_top_and_the_exporter():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from vtrace.export import registry_for
    from vtrace.export.text import renderer
    from vtrace.report import report_json, report_text, stat_json
    from vtrace.tui import view
    agg = _snapshot_with_backends()
    snap = agg.snapshot(close_interval=False)
    text = report_text(snap)
    assert "BACKENDS\n  vm1/net0  net    tap0             rx0 tx0\n" in text
    assert {q["name"]: q["backend"] for q in report_json(snap)["queues"]} == {"rx0": "tap0", "tx0": "tap0"}
    assert {q["backend"] for q in json.loads(json.dumps(stat_json(snap, list(snap.queues))))["queues"]} == {"tap0"}
    cols = view.columns(150)
    assert [c.key for c in cols][:4] == ["vm", "device", "backend", "name"]
    assert {r[:4] for r in view.cells(snap, range(len(snap.table)), cols)} == \
        {("vm1", "net0", "tap0", "rx0"), ("vm1", "net0", "tap0", "tx0")}
    assert view.order(snap, view.View(filter="tap0")).size == 2 and view.order(snap, view.View(filter="tap9")).size == 0
    fast = b"".join(renderer(lambda: snap)()).decode()
    assert 'vtrace_queue_used_buffers_total{vm="vm1",device="net0",queue="tx0",layer="vhost",backend="tap0"} 1\n' \
        in fast
    for exposition in (fast, generate_latest(registry_for(lambda: snap)).decode()):
        used = [s for f in text_string_to_metric_families(exposition) if f.name == "vtrace_queue_used_buffers"
                for s in f.samples]
        assert {(s.labels["queue"], s.labels["backend"], s.value) for s in used} == \
            {("rx0", "tap0", 0), ("tx0", "tap0", 1)}


def test_a_queue_described_again_keeps_its_checker_model():
    """A backend learnt later changes labels only: the checker's model of the
    queue goes on (a buffer fetched before is used after, no divergence); the
    queue's place in its findings says the new labels."""
    from vtrace.check import Checker
    from tests.unit.helpers import OBJECTS, Q1, batch, ev
    c = Checker()
    c.feed(batch([ev(Kind.FETCH, 100, Q1, id=3)], objects=OBJECTS))
    model = c.queues[Q1]
    relabelled = tuple(dataclasses.replace(o, backend="tap0") for o in OBJECTS)
    c.feed(batch([ev(Kind.USED, 200, Q1, id=3, len=0)], objects=relabelled))
    assert c.queues[Q1] is model and model.info.backend == "tap0" and not c.summary()
    moved = dataclasses.replace(OBJECTS[2], device="net1")
    c.feed(batch([], t_end=300, objects=(moved,)))
    assert c.queues[Q1].where == "vm1/net1/tx0" and Q1 in c.device_queues[("vm1", "net1")]
    assert Q1 not in c.device_queues[("vm1", "net0")]


def test_released_queues_leave_the_kernels_identity_maps_once_named(tmp_path):
    """vq_info and dev_info are bounded (4096 rows): a released device's rows go
    once its queues are named. dev_info's row stays while its owner lives (a
    RESET_OWNER: the device may be taken again, in its place in the open
    order) and goes with an owner that has exited."""
    h = Host(tmp_path)
    h.vmm(100, "web1")
    h.vmm(200, "db1")
    web, web_q = h.open(100)
    db, db_q = h.open(200)
    h.queues_seen(100, web, web_q)
    h.queues_seen(200, db, db_q)
    ids = ids_for(h)
    o, layer, pid, _k = columns(web_q + db_q)
    kind = np.full(o.size, int(Kind.RELEASE), np.uint8)
    assert len(ids.objects(o, layer, pid, kind)) == 4  # named first, from the rows about to go
    (tmp_path / "200" / "cmdline").write_bytes(b"")  # db1's QEMU exiting: its memory, and command line, gone
    ids.let_go(o, layer, kind)
    assert h.bpf[b"vq_info"].rows == {}
    assert set(h.bpf[b"dev_info"].rows) == {web}
    ids.let_go(o, layer, kind)  # told twice (RELEASE per queue, a replay of rows): nothing left to delete
