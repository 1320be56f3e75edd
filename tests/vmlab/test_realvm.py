"""realvm tier: real QEMU/KVM guests (nested, SVM) on the stock 6.1 lab host,
traced by vtrace in both modes at once (tests/vmlab/realvm.py builds the run).

Every figure is held to a counter vtrace did not compute: the guests' own NIC
statistics per queue and /proc/interrupts, the taps' counters on the host, the
vsock echo server's byte counts, the guest disk's stat. The counts are drawn at
random per run (the seed is in the test's id and in vms.json).

test_realvm_612.py runs the same tests on the 6.12 lab (a file per kernel:
`make test` boots two lab files at once, one per core).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from tests.vmlab import lab, realvm
from vtrace.aggregate import Aggregator
from vtrace.events import Kind, Layer
from vtrace.pipeline import Pipeline
from vtrace.runner import new_aggregator
from vtrace.sources.replay import ReplaySource

pytestmark = pytest.mark.vmlab

SUITE = None  # the lab's default kernel: Debian 6.1 (test_realvm_612.py: bookworm-backports' 6.12)
VSOCK_HEADER = 44  # struct virtio_vsock_hdr: an RX buffer's used.len is it plus the payload


@pytest.fixture(scope="module")
def suite():
    return SUITE


@pytest.fixture(scope="module")
def realvm_run(tmp_path_factory, suite):
    seed = int(os.environ.get("VTRACE_REALVM_SEED", random.randrange(1 << 32)))
    kernel = lab.stock_kernel(suite)
    out, run, vms = realvm.run(tmp_path_factory.mktemp(f"realvm-{kernel.release}"), kernel, seed)
    return results(out, run, vms, seed)


def results(out, run, vms, seed) -> dict:
    """What the tests read of one realvm run (its /out, the lab run, the VMs)."""
    assert run.marker("VTRACE-LAB-EXIT") == "0", run.console[-2000:]
    for m in ("REALVM-CAPTURE", "REALVM-STAT", "REALVM-LISTEN", "REALVM-MIGRATE-SOURCE",
              *(f"REALVM-QEMU-{vm.name}" for vm in vms), *(f"REALVM-RARP-{vm.name}" for vm in vms if vm.migrate)):
        assert run.marker(m) == "0", (m, seed, run.console[-2000:])
    # a restored VM's console goes on in its new QEMU's
    guests = {vm.name: realvm.guest_counters("".join((out / f).read_text() for f in (
        f"{vm.name}.console", *((f"{vm.name}-in.console",) if vm.migrate else ())))) for vm in vms}
    for name, g in guests.items():
        assert g.up and not g.failures, (name, seed, g)
    vsock = json.loads((out / "vsock.json").read_text())
    cont = vsock["paused"][1]
    agg = new_aggregator(check=True)  # the checker's tallies and links: the stop/cont and migration tests
    after_cont = _replay(out, agg, cont)
    # the same capture through an eviction window shorter than web1's stop
    short = Aggregator(evict_after_s=realvm.EVICT_S)
    short_after_cont = _replay(out, short, cont)
    ev, objs = lab.capture_events(out / "realvm.vtrace")
    stat = [json.loads(ln) for ln in (out / "stat.jsonl").read_text().splitlines() if ln.startswith("{")]
    return {"seed": seed, "out": out, "run": run, "vms": {vm.name: vm for vm in vms}, "guests": guests,
            "snap": agg.snapshot(close_interval=False), "tally": agg.checker.tally, "ev": ev, "objs": objs,
            "migrations": agg.checker.migrations, "short": short.snapshot(close_interval=False),
            "after_cont": after_cont, "short_after_cont": short_after_cont,
            "migrate_log": {vm.name: (out / f"{vm.name}.migrate").read_text() for vm in vms if vm.migrate},
            "stat": stat,
            "taps": realvm.tap_counters(run), "vsock": vsock,
            # QEMU's own announcement after the restore: on the tap, in no queue
            "rarp": {vm.name: json.loads((out / f"{vm.name}.rarp.json").read_text())["rarp"] for vm in vms if vm.migrate}}


def _replay(out, agg, at_ns: int):
    """The capture replayed into ``agg``; the snapshot of the first quarter
    second ending after ``at_ns`` (CLOCK_MONOTONIC, as the events' ts)."""
    kept = []

    def keep(snap):
        if not kept and snap.ts_end > at_ns:
            kept.append(snap)
    Pipeline(ReplaySource(str(out / "realvm.vtrace")), aggregator=agg).run(interval_ns=250_000_000, on_interval=keep)
    assert kept, "the capture ends before web1 was continued"
    return kept[0]


SUMMED = ("used_total", "kicks_total", "signals_total")


def _summed(rows) -> dict[tuple[str, str], dict[str, int]]:
    """Totals by (device, queue name) over the VM's processes: db1's queues
    live in two QEMUs, the one it was saved from and the one it was restored in."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for q in rows:
        into = out.setdefault((q["device"], q["name"]), dict.fromkeys(SUMMED, 0))
        for k in SUMMED:
            into[k] += q[k]
    return out


def _queues(r, vm: str) -> dict[tuple[str, str], dict[str, int]]:
    """The VM's vhost queues in the capture, by (device, queue name)."""
    return _summed({"device": q.device, "name": q.name, **{k: getattr(q, k) for k in SUMMED}}
                   for q in r["snap"].queues if q.vm == vm)


def _stat_queues(r, vm: str) -> dict[tuple[str, str], dict[str, int]]:
    """The same from `vtrace stat -j` (counting in the kernel): its last report's totals."""
    return _summed(q for q in r["stat"][-1]["queues"] if q["vm"] == vm)


def test_vms_are_named_as_qemu_was_told_and_nothing_else_is_a_vm(realvm_run):
    """-name guest=web1,debug-threads=on (libvirt's form) and -name db1; no row
    for a thread that is not a VM (vhost workers, kworkers)."""
    r = realvm_run
    kvm_vms = {o.vm for o in r["objs"].values() if o.layer == Layer.KVM}
    vhost_vms = {o.vm for o in r["objs"].values() if o.layer == Layer.VHOST}
    assert kvm_vms == {"web1", "db1"}, (r["seed"], kvm_vms)
    assert vhost_vms == {"web1", "db1"}, (r["seed"], vhost_vms)
    assert {v.vm for v in r["snap"].vms} == {"web1", "db1"}


def test_devices_numbered_per_vm_with_their_backends(realvm_run):
    r = realvm_run
    web1 = {(q.device, q.name, q.dev_type, q.backend) for q in r["snap"].queues if q.vm == "web1"}
    db1 = {(q.device, q.name, q.dev_type, q.backend) for q in r["snap"].queues if q.vm == "db1"}
    assert {x for x in web1 if x[2] == "net"} == {("net0", "rx0", "net", "tap0"), ("net0", "tx0", "net", "tap0")}, web1
    assert {x[:2] for x in web1 if x[2] == "vsock"} >= {("vsock0", "rx"), ("vsock0", "tx")}, web1
    assert {x[3] for x in web1 if x[2] == "vsock"} == {"cid:3"}, web1
    assert db1 == {(f"net0", f"{d}{k}", "net", "tap1") for d in ("rx", "tx") for k in range(2)}, db1


def test_net_used_per_queue_equals_the_guests_own_counters(realvm_run):
    """Each queue's used buffers, streamed (capture) and counted in the kernel
    (stat -j), are the guest NIC's own packets: per queue where its ethtool
    statistics have them (6.1; 6.12 keeps per-queue packets in netlink's qstats
    only), in total from sysfs, and the frames its tap passed on the host
    (besides the RARPs a restored QEMU writes to it itself, counted there).
    Each queue pair carried its own ping round (the guest pinned TX with XPS).
    db1's queues lived in two QEMUs (saved and restored): summed."""
    r = realvm_run
    for name, vm in r["vms"].items():
        g, caught, counted = r["guests"][name], _queues(r, name), _stat_queues(r, name)
        keys = [("net0", f"{d}{k}") for k in range(vm.queues) for d in ("rx", "tx")]
        used = {k: caught[k]["used_total"] for k in keys}
        assert {k: counted[k]["used_total"] for k in keys} == used, (name, r["seed"])
        if "rx_queue_0_packets" in g.nic:
            assert used == {("net0", f"{d}{k}"): g.nic[f"{d}_queue_{k}_packets"] for d, k in
                            ((q[:2], int(q[2:])) for _dev, q in keys)}, (name, r["seed"], g.nic)
        rx = sum(v for (_d, q), v in used.items() if q.startswith("rx"))
        tx = sum(v for (_d, q), v in used.items() if q.startswith("tx"))
        assert (rx, tx) == (g.nic["sys_rx_packets"], g.nic["sys_tx_packets"]), (name, r["seed"])
        rarp = r["rarp"].get(name, 0)
        assert (tx + rarp, rx) == r["taps"][vm.tap] and (tx, rx) == (sum(vm.pings), sum(vm.pings)), \
            (name, r["seed"], r["taps"][vm.tap], rarp)
        assert [used[("net0", f"tx{k}")] for k in range(vm.queues)] == vm.pings, (name, r["seed"])


def test_net_signals_equal_the_guests_interrupts_per_queue(realvm_run):
    """vhost's call eventfd signals per queue and the guest's interrupts on that
    queue's MSI-X vector (/proc/interrupts virtioN-input.k / output.k)."""
    r = realvm_run
    for name, vm in r["vms"].items():
        g, caught = r["guests"][name], _queues(r, name)
        irq = {n.split("-", 1)[1]: c for n, c in g.interrupts.items() if "-input." in n or "-output." in n}
        want = {f"{'rx' if d == 'input' else 'tx'}{k}": irq[f"{d}.{k}"] for d in ("input", "output")
                for k in range(vm.queues)}
        assert {q: caught[("net0", q)]["signals_total"] for q in want} == want, (name, r["seed"])


def test_vsock_bytes_equal_the_echo_servers(realvm_run):
    r = realvm_run
    vm = r["vms"]["web1"]
    host = r["vsock"][str(vm.cid)]
    assert len(r["vsock"]["paused"]) == 2  # stopped and continued mid-conversation
    sent = vm.vsock_msgs * vm.vsock_size
    assert {k: host[k] for k in ("received", "sent")} == {"received": sent, "sent": sent} and r["guests"]["web1"].vsock == {"sent": sent, "received": sent}
    rx = [o for o, i in r["objs"].items() if i.vm == "web1" and i.dev_type == "vsock" and i.name == "rx"]
    ev = r["ev"]
    used = ev[(ev["kind"] == Kind.USED) & np.isin(ev["obj"], rx)]
    assert int((used["len"].astype(np.int64) - VSOCK_HEADER).sum()) == sent, r["seed"]


def _guest_kicks(g, direction: str, k: int) -> int:
    """The driver's own kick count for a queue (virtqueue_notify calls: ethtool's
    rx_queue_<k>_kicks on 6.1, rx<k>_kicks on 6.12)."""
    return g.nic.get(f"{direction}_queue_{k}_kicks", g.nic.get(f"{direction}{k}_kicks"))


def _own_device_interrupts(g) -> int:
    """The guest's interrupts from QEMU's own virtio-blk (virtioN-req.k): no vhost behind it."""
    return sum(c for n, c in g.interrupts.items() if n.startswith("virtio") and "-req." in n)


def test_kicks_are_the_drivers_and_each_is_an_ioeventfd_write(realvm_run):
    """Each vhost-net TX queue's kicks are its driver's own (the guest NIC's kick
    counters); the VM's ioeventfd writes are every vhost kick plus one per disk
    read of QEMU's virtio-blk (one request at a time: each one notify). RX
    kicks are not compared: the driver's refill after link-up may kick after
    the guest's baseline read and before vtrace attached (measured: +1 on both
    kernels, seen by neither vhost nor KVM while traced)."""
    r = realvm_run
    for name, vm in r["vms"].items():
        g, caught = r["guests"][name], _queues(r, name)
        kicks = {f"tx{k}": caught[("net0", f"tx{k}")]["kicks_total"] for k in range(vm.queues)}
        assert kicks == {f"tx{k}": _guest_kicks(g, "tx", k) for k in range(vm.queues)}, (name, r["seed"], g.nic)
        assert g.disk_reads == vm.reads, (name, g.disk_reads)
        stats = next(v for v in r["snap"].vms if v.vm == name)
        vhost_kicks = sum(q["kicks_total"] for q in caught.values())
        assert stats.ioeventfd_total == vhost_kicks + vm.reads, (name, r["seed"], stats.ioeventfd_total, vhost_kicks)


def test_injections_belong_to_their_vm_on_every_path(realvm_run):
    """Every irqfd injection (the MSI fast path that vhost's worker takes
    included) is counted for the VM whose struct kvm it concerns: the VM's
    injections are its vhost queues' signals plus the interrupts of QEMU's own
    virtio-blk in the guest. A vector of one queue (the NIC's) shows each
    injection as one guest interrupt; vhost-vsock's queues share one vector,
    where two injections close together may be one interrupt."""
    r = realvm_run
    for name in r["vms"]:
        stats = next(v for v in r["snap"].vms if v.vm == name)
        g, caught = r["guests"][name], _queues(r, name)
        signals = sum(q["signals_total"] for q in caught.values())
        assert stats.irqfd_total == signals + _own_device_interrupts(g), \
            (name, r["seed"], stats.irqfd_total, signals, g.interrupts)
        shared = sum(c for n, c in g.interrupts.items() if n.endswith("-virtqueues"))
        vsock = sum(q["signals_total"] for (d, _q), q in caught.items() if d.startswith("vsock"))
        assert shared <= vsock, (name, shared, vsock)


def test_stop_and_cont_mid_conversation_keep_every_base(realvm_run):
    """QEMU's monitor stopped web1 while its guest waited for a vsock echo
    (vsock_listen.py) and continued it: every vhost queue of web1 stopped
    (GET_VRING_BASE) and restarted from the same base (SET_VRING_BASE), the
    echo went on after it, and the checker checked each restart's base
    against its stop (vring-base-mismatch: checked, none found)."""
    r = realvm_run
    ev = r["ev"]
    mine = {o: i for o, i in r["objs"].items() if i.vm == "web1" and i.layer == Layer.VHOST}
    assert {(i.device, i.name) for i in mine.values()} >= {("net0", "rx0"), ("net0", "tx0"), ("vsock0", "rx"),
                                                           ("vsock0", "tx")}
    for obj, info in mine.items():
        if info.name == "event":
            continue
        q = ev[(ev["obj"] == obj) & np.isin(ev["kind"], [Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.USED])]
        life = [(Kind(k).name, int(b)) for k, b in zip(q["kind"].tolist(), q["id"].tolist()) if k != Kind.USED]
        # the stop, the restart from the same base, the power-off's stop
        assert [k for k, _b in life] == ["VRING_BASE_GET", "VRING_BASE_SET", "VRING_BASE_GET"], (info.name, life)
        assert life[0][1] == life[1][1], (info.name, life)
        if (info.device, info.name) == ("vsock0", "rx"):  # the echo held back by the stop came after it
            restart = int(np.flatnonzero(q["kind"] == Kind.VRING_BASE_SET)[0])
            assert (q["kind"][restart:] == Kind.USED).sum() >= 1
    tally = r["tally"]["vring-base-mismatch"]
    assert tally.checked >= 4 and tally.found == 0, tally


def _lives(r, vm: str) -> dict[int, list[tuple[str, str, int]]]:
    """Per QEMU process (pid) of ``vm``: each vhost queue's (device, name) and
    its GET/SET_VRING_BASE and RELEASE events in order, as (kind, queue, base)."""
    ev = r["ev"]
    out: dict[int, list] = {}
    for obj, info in r["objs"].items():
        if info.vm != vm or info.layer != Layer.VHOST:
            continue
        q = ev[(ev["obj"] == obj) & np.isin(ev["kind"], [Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.RELEASE])]
        out.setdefault(info.pid, []).extend((Kind(k).name, info.name, int(b), int(t))
                                            for k, b, t in zip(q["kind"].tolist(), q["id"].tolist(), q["ts"].tolist()))
    return {pid: [x[:3] for x in sorted(rows, key=lambda x: x[3])] for pid, rows in out.items()}


def _restored_pid(r, vm: str) -> int:
    """The QEMU started with -incoming, as vtrace read it from its command line."""
    pids = {i.pid for i in r["objs"].values() if i.vm == vm and i.layer == Layer.VHOST and i.incoming}
    assert len(pids) == 1, pids
    return pids.pop()


def test_a_vm_saved_and_restored_in_a_new_qemu_goes_on_from_its_saved_bases(realvm_run):
    """db1 was stopped, migrated to a file and quit through its monitor halfway
    through its traffic, and restored by a new QEMU started with -incoming:
    each of its vhost queues in the new process starts from the base the old
    one saved at the stop (the old one's devices released when it quit); the
    checker links them by VM, device and queue name and checks each restart
    (base continuity and the in-flight set at the stop, none found); the
    traffic before and after adds up to the guest's own counters (the net
    tests above sum both processes)."""
    r = realvm_run
    assert "completed" in r["migrate_log"]["db1"], r["migrate_log"]["db1"]
    lives = _lives(r, "db1")
    assert len(lives) == 2, lives
    restored = _restored_pid(r, "db1")
    source = next(pid for pid in lives if pid != restored)
    queues = ["rx0", "tx0", "rx1", "tx1"]
    saved = {}
    for name in queues:  # the source (started before vtrace attached): stopped by `stop`, released by `quit`
        mine = [(k, b) for k, q, b in lives[source] if q == name]
        assert [k for k, _b in mine] == ["VRING_BASE_GET", "RELEASE"], (name, mine)
        saved[name] = mine[0][1]
    assert saved["tx0"] >= r["vms"]["db1"].pings[0], saved  # round 0 went through tx0 before the save
    for name in queues:  # the restored: from the saved base, stopped again at power-off
        mine = [(k, b) for k, q, b in lives[restored] if q == name]
        assert [k for k, _b in mine][:2] == ["VRING_BASE_SET", "VRING_BASE_GET"], (name, mine)
        assert mine[0][1] == saved[name], (name, mine, saved)
    vhost = [i for i in r["objs"].values() if i.layer == Layer.VHOST]
    assert {i.incoming for i in vhost if i.pid == restored} == {True}
    assert not any(i.incoming for i in vhost if i.pid != restored)
    assert sorted((where, src, dst) for where, src, dst, _ts in r["migrations"]) == \
        [(f"db1/net0/{q}", source, restored) for q in sorted(queues)], r["migrations"]
    tally = r["tally"]
    assert tally["vring-base-mismatch"].checked >= 8 and tally["vring-base-mismatch"].found == 0, tally
    assert tally["inflight-at-stop"].found == 0 and tally["inflight-lost-after-resume"].found == 0, tally
    # as an operator sees it
    p = subprocess.run([sys.executable, "-m", "vtrace.cli", "check", str(r["out"] / "realvm.vtrace")],
                       capture_output=True, text=True, cwd=lab.PROJECT)
    assert p.returncode == 0 and "CONTINUED IN ANOTHER PROCESS" in p.stdout, p.stdout + p.stderr
    assert sum(f"pid {source} -> pid {restored}" in ln for ln in p.stdout.splitlines()) == 4, p.stdout


def test_a_stopped_vm_is_never_forgotten_a_gone_one_is(realvm_run):
    """Replayed through an eviction window (EVICT_S) shorter than web1's stop:
    web1, stopped and quiet for longer than the window while its QEMU held its
    devices, keeps its name, devices, backends and whole history once
    continued, as with the default window. A VM gone (web1 and db1's first
    QEMU, each released when its QEMU ended) is forgotten once quiet for the
    window; with the default window it stays, released."""
    r = realvm_run
    web1_objs = [o for o, i in r["objs"].items() if i.vm == "web1"]
    ts = np.sort(r["ev"]["ts"][np.isin(r["ev"]["obj"], web1_objs)]).astype(np.int64)
    assert np.diff(ts).max() > realvm.EVICT_S * 1e9  # the stop: nothing of web1 for longer than the window

    def rows(snap, vm):
        return sorted((q.device, q.name, q.backend, q.pid, q.state, q.used_total, q.kicks_total, q.signals_total,
                       len(q.timeline)) for q in snap.queues if q.vm == vm)
    web1 = rows(r["after_cont"], "web1")
    assert len(web1) >= 4 and {row[4] for row in web1} == {"running"}, web1
    assert rows(r["short_after_cont"], "web1") == web1, (rows(r["short_after_cont"], "web1"), web1)
    assert {v.vm for v in r["short_after_cont"].vms} == {"web1", "db1"}
    # At the end every QEMU has quit or is quitting. A queue released more than
    # two windows (one to go quiet, one between eviction passes) and a batch
    # before the end is gone; one not released is kept; in between, either.
    end, window = r["snap"].ts_end, realvm.EVICT_S * 1e9
    short = {(q.vm, q.device, q.name, q.pid) for q in r["short"].queues}
    gone = set()
    for q in r["snap"].queues:
        key = (q.vm, q.device, q.name, q.pid)
        if q.state != "released":
            assert key in short, key
        elif end - q.timeline[-1].ts > 2 * window + 0.5e9:
            assert q.timeline[-1].what == "release" and key not in short, (key, q.timeline[-1])
            gone.add(key)
    source = {i.pid for i in r["objs"].values() if i.vm == "db1" and i.layer == Layer.VHOST} - {_restored_pid(r, "db1")}
    assert {(vm, pid) for vm, _d, _q, pid in gone} >= {("db1", pid) for pid in source}, gone


def test_exit_reasons_are_named(realvm_run):
    """By the SVM table (the lab's kvm_amd), in the capture and in stat -j."""
    r = realvm_run
    for v in r["snap"].vms:
        names = [n for n, _c in v.exits_by_reason]
        assert names and all(not n.isdigit() for n in names), (v.vm, v.exits_by_reason)
        assert {"IOIO", "NPF", "CPUID", "MSR"} <= set(names), names
    counted = r["stat"][-1]["vms"]
    assert {v["vm"] for v in counted} == {"web1", "db1"}, counted
    for v in counted:
        assert {"IOIO", "NPF"} <= set(v["exits_by_reason"]) and not any(k.isdigit() for k in v["exits_by_reason"]), v


def test_nothing_lost_and_the_host_unhurt(realvm_run):
    r = realvm_run
    assert r["snap"].lost_total == 0, r["snap"].lost_total
    assert r["stat"][-1]["lost_total"] == 0
    console = r["run"].console
    for bad in ("Kernel panic", "BUG:", "WARNING:", "stack end", "soft lockup", "hung_task"):
        assert bad not in console, bad
