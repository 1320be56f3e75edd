"""vtrace live on real vhost-net, in Debian's stock kernel under QEMU.

Our own machines have no vhost and no kprobes; the lab's kernel has both.
Inside the guest (this machine's userland over 9p, see lab.boot_host_root)
`vtrace capture --source live` runs while tests/vmlab/vmm.py plays the VMM:
vhost-net rings in its own memory with a tap backend, N TX frames, M RX
frames, then a stop/restart (GET/SET_VRING_BASE) and R more RX frames; then
tests/vmlab/vsock_vmm.py plays a vhost-vsock guest driver against an
AF_VSOCK socket in the same kernel (connect, data both ways, shutdown, stop,
restart from the vring bases, one more exchange, stop).
Each VMM writes down what it did; every assertion holds vtrace's capture
against that record, exactly.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.vmlab import lab
from vtrace.aggregate import Aggregator
from vtrace.events import Kind
from vtrace.pipeline import Pipeline
from vtrace.sources.replay import ReplaySource

pytestmark = pytest.mark.vmlab

ROOT = Path(__file__).resolve().parents[2]
TX, RX, RESTART, BATCH = 64, 32, 8, 8
BPFTOOL = "bpftool -j prog list > /out/$1.progs-{}.json 2>>/out/$1.bpftool.err"
TO_GUEST, TO_HOST = 16, 8  # vsock data packets each way
SCRIPT = f"{sys.executable} -m vtrace.cli doctor > /out/doctor.txt 2>&1\n" + lab.capture_phases(
    sys.executable, f"{sys.executable} tests/vmlab/vmm.py /out/$1.vmm.json --tx {TX} --rx {RX} "
    f"--restart {RESTART} --batch {BATCH} && {sys.executable} tests/vmlab/vsock_vmm.py /out/$1.vsock.json "
    f"--to-guest {TO_GUEST} --to-host {TO_HOST}",
    before=BPFTOOL.format("before"), during=BPFTOOL.format("during"), after=BPFTOOL.format("after"))


@pytest.fixture(scope="module")
def lab_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("vhost-lab")
    return lab.run_host_root(d, ["vhost_net", "tun", "vhost_vsock"], SCRIPT)


@pytest.fixture(scope="module", params=list(lab.STRATEGY_PHASES))
def lab_run(request, lab_out):
    out, run = lab_out
    ph = request.param
    lab.check_phase(run, out, ph, "the VMM")
    return {"phase": ph, "vmm": json.loads((out / f"{ph}.vmm.json").read_text()), "capture": out / f"{ph}.vtrace",
            "vsock": json.loads((out / f"{ph}.vsock.json").read_text()),
            "probes": lab.probe_table(out, ph),
            "doctor": (out / "doctor.txt").read_text(), "seconds": run.seconds,
            "progs": {w: json.loads((out / f"{ph}.progs-{w}.json").read_text()) for w in ("before", "during", "after")}}


def _queues(lab_run, vmm: str = "vmm", names=("rx0", "tx0")) -> dict[str, np.ndarray]:
    """A VMM's two vhost queues' events, by queue name (net: rx0/tx0, vsock: rx/tx)."""
    return lab.vm_queues(lab_run["capture"], lab_run[vmm]["pid"], names)


def test_every_vhost_point_attaches_on_the_stock_kernel(lab_run):
    pts = {n: p for n, p in lab_run["probes"].items() if p["layer"] == "vhost"}
    assert set(pts) == {"fetch", "used", "signal", "notify_enable", "notify_disable", "kick", "vring_ioctl",
                        "reset_owner", "set_owner", "vhost:release", "vdpa_ioctl", "net_ioctl", "vsock_ioctl"}
    failed = {n: p["error"] for n, p in pts.items() if not p["attached"]}
    # Debian 6.1 is built without vDPA (CONFIG_VDPA is not set): no vhost_vdpa module
    assert set(failed) == {"vdpa_ioctl"} and "vhost_vdpa_unlocked_ioctl is not in /proc/kallsyms" in \
        failed["vdpa_ioctl"], failed
    del pts["vdpa_ioctl"]
    how = {n: p["strategy"].split(":")[0] for n, p in pts.items()}
    if lab_run["phase"] == "kprobe":
        assert set(how.values()) == {"kprobe"}, how
    else:
        # fentry/fexit wherever it can. vhost_notify is only there as the clone
        # vhost_notify.constprop.0 on 6.1, which fentry cannot name: a kprobe on
        # the clone. vhost_get_vq_desc has 7 arguments, one more than 6.1's x86
        # trampoline takes: refused at attach, the program is rebuilt with a
        # kprobe there, and the table says why.
        assert how == {n: "kprobe" if n in ("signal", "fetch") else "fentry" for n in pts}, how
        assert pts["signal"]["strategy"] == "kprobe:vhost_notify.constprop.0"
        assert "ENOTSUPP" in pts["fetch"]["error"] and pts["fetch"]["attached"]
    assert "ok   kprobes" in lab_run["doctor"] and "ok   fentry" in lab_run["doctor"]


def test_programs_load_as_chosen_and_none_stays_after_exit(lab_run):
    """While the capture runs, vhost's programs are loaded as the strategy says
    (vtrace's own fentry/fexit loads show as type tracing); after it exits on
    SIGTERM none of them is left, fentry links included."""
    ids = {w: {p["id"]: p for p in progs} for w, progs in lab_run["progs"].items()}
    ours = {p.get("name"): p["type"] for i, p in ids["during"].items() if i not in ids["before"]}
    if lab_run["phase"] == "fentry":
        assert ours.get("used_entry") == "tracing" and ours.get("kick_entry") == "tracing", ours
        assert ours.get("vring_ioctl_ret") == "tracing", ours  # fexit (the kernel keeps 15 characters)
        assert ours.get("fetch_entry") == "kprobe" and ours.get("signal_return") == "kprobe", ours
    else:
        assert ours.get("used_entry") == "kprobe" and "tracing" not in ours.values(), ours
    assert not set(ids["after"]) - set(ids["before"]), "left loaded after vtrace exited"


def test_fetch_and_used_match_the_vmm_exactly(lab_run):
    q, vmm = _queues(lab_run), lab_run["vmm"]
    tx, rx = q["tx0"], q["rx0"]
    # TX: every posted head fetched once, in order, and returned with used.len 0
    # (the device writes nothing into a TX buffer)
    assert tx[tx["kind"] == Kind.FETCH]["id"].tolist() == list(range(TX))
    used = tx[tx["kind"] == Kind.USED]
    assert [[int(i), int(n)] for i, n in zip(used["id"], used["len"])] == vmm["tx"]["used"]
    assert (used["len"] == 0).all() and vmm["tx"]["on_tap"] == TX
    # RX: heads 0..M+R-1, each used.len = 12-byte header + the frame the VMM sent
    assert rx[rx["kind"] == Kind.FETCH]["id"].tolist() == list(range(RX + RESTART))
    used = rx[rx["kind"] == Kind.USED]
    assert [[int(i), int(n)] for i, n in zip(used["id"], used["len"])] == vmm["rx"]["used"]
    assert used["len"].tolist() == [12 + f for f in vmm["rx"]["frames"]]
    # the used index each entry moved the ring to, as the VMM read it at the end
    assert int(used["arg"][-1]) == vmm["used_idx"]["rx"] and int(tx[tx["kind"] == Kind.USED]["arg"][-1]) == TX


def test_kicks_and_signals_equal_the_eventfd_counts(lab_run):
    q, vmm = _queues(lab_run), lab_run["vmm"]
    for name, key in (("tx0", "tx"), ("rx0", "rx")):
        ev = q[name]
        kinds = Counter(Kind(k).name for k in ev["kind"].tolist())
        assert kinds["KICK"] == vmm["kicks"][key], (name, kinds, vmm["kicks"])
        assert kinds["SIGNAL"] == vmm["calls"][key], (name, kinds, vmm["calls"])


def test_vring_base_stop_and_restart(lab_run):
    q, vmm = _queues(lab_run), lab_run["vmm"]
    for name, key in (("tx0", "tx"), ("rx0", "rx")):
        ev = q[name]
        got = ev[ev["kind"] == Kind.VRING_BASE_GET]["id"].tolist()
        put = ev[ev["kind"] == Kind.VRING_BASE_SET]["id"].tolist()
        assert got == [vmm["bases"][key]] and put == [0, vmm["bases"][key]], (name, got, put)
    assert vmm["bases"] == {"rx": RX, "tx": TX}


@pytest.mark.parametrize("vmm", ["vmm", "vsock"])
def test_set_owner_once_per_queue_before_setup(lab_run, vmm):
    """Each VMM's SET_OWNER: one event on each of its queues, from its own pid,
    before the queue's first SET_VRING_BASE; its second SET_OWNER, refused with
    EBUSY, records nothing."""
    names = ("rx0", "tx0") if vmm == "vmm" else ("rx", "tx")
    q, rec = _queues(lab_run, vmm, names), lab_run[vmm]
    assert rec["owner_again_errno"] == errno.EBUSY
    for name in names:
        ev = q[name]
        own = ev[ev["kind"] == Kind.SET_OWNER]
        assert own["pid"].tolist() == [rec["pid"]], (name, own)
        first_set = ev[ev["kind"] == Kind.VRING_BASE_SET]["ts"][0]
        assert own["ts"][0] < first_set, name


def test_devices_are_numbered_per_vm_with_their_backends(lab_run):
    """Each VMM's first device of a type is its 0 (not a host-wide count): the
    vhost-net VMM's NIC is net0 on the tap its SET_BACKEND passed (named from
    the VMM's /proc/PID/fdinfo), the vsock VMM's device vsock0 with the CID
    its SET_GUEST_CID set; the last description of each queue says so."""
    from vtrace.events import Layer
    _ev, objs = lab.capture_events(lab_run["capture"])
    got = {(o.vm, o.device, o.name, o.queue, o.backend) for o in objs.values() if o.layer == Layer.VHOST}
    net, vs = f"python-{lab_run['vmm']['pid']}", f"python-{lab_run['vsock']['pid']}"
    assert {g for g in got if g[0] == net} == {(net, "net0", "rx0", 0, "vt0"), (net, "net0", "tx0", 1, "vt0")}, got
    cid = f"cid:{lab_run['vsock']['cid']}"
    assert {g for g in got if g[0] == vs} == {(vs, "vsock0", "rx", 0, cid), (vs, "vsock0", "tx", 1, cid)}, got


def test_checker_finds_the_healthy_run_conformant_and_nothing_in_flight(lab_run):
    p = subprocess.run([sys.executable, "-m", "vtrace.cli", "check", str(lab_run["capture"])],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    agg = Aggregator()
    Pipeline(ReplaySource(str(lab_run["capture"])), aggregator=agg).run()
    snap = agg.snapshot(close_interval=False)
    vm = f"python-{lab_run['vmm']['pid']}"
    mine = [x for x in snap.queues if x.vm == vm]
    # the VMM left nothing fetched and unused: vhost-net returns each buffer as it goes
    assert sorted(x.name for x in mine) == ["rx0", "tx0"] and all(x.in_flight == 0 for x in mine)
    assert {x.name: x.used_total for x in mine} == {"tx0": TX, "rx0": RX + RESTART}


def test_vsock_rings_match_the_vmm_exactly(lab_run):
    """vhost-vsock, with an AF_VSOCK socket in the same kernel as the peer:
    host-to-guest packets land in RX buffers (used.len = 44-byte header +
    payload), guest-to-host ones are taken from TX (used.len 0: vhost writes
    nothing back into them, drivers/vhost/vsock.c vhost_vsock_handle_tx_kick)."""
    q, vs = _queues(lab_run, "vsock", ("rx", "tx")), lab_run["vsock"]
    assert vs["host"]["received"] and len(vs["rx"]["packets"]) >= TO_GUEST + 2
    for name in ("rx", "tx"):
        ev = q[name]
        used = ev[ev["kind"] == Kind.USED]
        assert [[int(i), int(n)] for i, n in zip(used["id"], used["len"])] == vs[name]["used"], name
        # each buffer fetched once, in ring order, before its used entry
        assert ev[ev["kind"] == Kind.FETCH]["id"].tolist() == [h for h, _n in vs[name]["used"]], name
        kinds = Counter(Kind(k).name for k in ev["kind"].tolist())
        assert (kinds["KICK"], kinds["SIGNAL"]) == (vs["kicks"][name], vs["calls"][name]), (name, kinds)
        # stopped twice: GET_VRING_BASE = where vhost stopped taking buffers, the
        # RX spares (available, never needed) not among them; restarted in
        # between from there (SET_VRING_BASE; 0 at setup), one buffer each way
        got = ev[ev["kind"] == Kind.VRING_BASE_GET]["id"].tolist()
        assert got == [vs["bases"][name], vs["bases_after_restart"][name]], (name, got)
        assert got == [vs["used_before_restart"][name], len(vs[name]["used"])] and got[1] == got[0] + 1, got
        put = ev[ev["kind"] == Kind.VRING_BASE_SET]
        assert put["id"].tolist() == [0, vs["bases"][name]], (name, put["id"].tolist())
        # the restart's buffer: fetched and used after its SET_VRING_BASE
        after = ev[(ev["ts"] > put["ts"][-1]) & np.isin(ev["kind"], [Kind.FETCH, Kind.USED])]
        assert after["id"].tolist() == [vs[name]["used"][-1][0]] * 2, (name, after["id"].tolist())
    assert {p["len"] + 44 for p in vs["rx"]["packets"]} == {n for _h, n in vs["rx"]["used"]}
    assert vs["avail_idx"]["rx"] > vs["bases"]["rx"]
    assert set(q["tx"][q["tx"]["kind"] == Kind.USED]["len"].tolist()) == {0}


def test_vsock_queues_are_named_and_nothing_left_in_flight(lab_run):
    agg = Aggregator()
    Pipeline(ReplaySource(str(lab_run["capture"])), aggregator=agg).run()
    snap = agg.snapshot(close_interval=False)
    vs = lab_run["vsock"]
    mine = [x for x in snap.queues if x.vm == f"python-{vs['pid']}"]
    assert {(x.dev_type, x.name, x.size) for x in mine} == {("vsock", "rx", vs["num"]), ("vsock", "tx", vs["num"])}
    assert all(x.in_flight == 0 for x in mine)
    assert {x.name: x.used_total for x in mine} == {n: len(vs[n]["used"]) for n in ("rx", "tx")}
