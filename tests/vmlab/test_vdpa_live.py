"""vtrace live on Debian 12's newer kernel (bookworm-backports; 6.12 when this
was written): vhost-vdpa with a VDUSE device, and vhost-net once more.

Debian's 6.1 is built without vDPA, so the vdpa_ioctl point (vhost-vdpa's
SET_VRING_ENABLE, SUSPEND and RESUME) is proven here. tests/vmlab/vdpa_vmm.py
makes a two-queue virtio-blk device in user space (VDUSE), binds it to
vhost_vdpa and drives the queue lifecycle a vhost-vdpa VMM goes through around
a stop and restart; the capture must hold exactly that, queue by queue.
tests/vmlab/vmm.py's vhost-net traffic runs under the same capture, so the
data-path points are held to a second kernel too (its vhost workers are
vhost_tasks, not the kthreads of 6.1). The kernel is fetched like the stock
one (lab.stock_kernel), from the backports suite with apt lists of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.vmlab import lab
from vtrace.aggregate import Aggregator
from vtrace.events import Kind, Layer
from vtrace.pipeline import Pipeline
from vtrace.sources.replay import ReplaySource

pytestmark = pytest.mark.vmlab

ROOT = Path(__file__).resolve().parents[2]
TX, RX, RESTART, BATCH = 32, 16, 4, 8
MISSES = 200  # kprobe misses provoked on purpose (kprobe_missed.py)
SCRIPT = lab.capture_phases(
    sys.executable, f"{sys.executable} tests/vmlab/vdpa_vmm.py /out/$1.vdpa.json --name vtrace-vdpa-$1 && "
    f"{sys.executable} tests/vmlab/vmm.py /out/$1.vmm.json --tx {TX} --rx {RX} --restart {RESTART} --batch {BATCH}",
    after=f"[ $1 = kprobe ] && {{ {sys.executable} tests/vmlab/kprobe_missed.py {MISSES} /out/kmissed.json "
          "2>/out/kmissed.err; echo VTRACE-KMISSED $?; }")
VHOST_POINTS = {"fetch", "used", "signal", "notify_enable", "notify_disable", "kick", "vring_ioctl", "reset_owner",
                "set_owner", "vhost:release", "vdpa_ioctl", "net_ioctl", "vsock_ioctl"}
OP_KIND = {"set_vring_base": Kind.VRING_BASE_SET, "get_vring_base": Kind.VRING_BASE_GET,
           "set_vring_enable": Kind.VRING_ENABLE}


@pytest.fixture(scope="module")
def lab_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("vdpa-lab")
    kernel = lab.stock_kernel(lab.BACKPORTS)
    # vhost_vsock: no VMM drives it here, but its SET_GUEST_CID point must load on this kernel too
    out, run = lab.run_host_root(d, ["vhost_vdpa", "vduse", "vhost_net", "tun", "vhost_vsock"], SCRIPT, kernel=kernel)
    return out, run, kernel


@pytest.fixture(scope="module", params=list(lab.STRATEGY_PHASES))
def lab_run(request, lab_out):
    out, run, kernel = lab_out
    ph = request.param
    lab.check_phase(run, out, ph, "the vDPA VMM or the vhost-net VMM")
    return {"phase": ph, "kernel": kernel.release, "capture": out / f"{ph}.vtrace",
            "vdpa": json.loads((out / f"{ph}.vdpa.json").read_text()),
            "vmm": json.loads((out / f"{ph}.vmm.json").read_text()), "probes": lab.probe_table(out, ph)}


def test_guest_points_take_tp_btf_with_the_typed_cast_on_the_newer_kernel(lab_run):
    """6.12 has bpf_rdonly_cast (6.1 does not): under tp_btf the interrupt program
    reads the virtqueue through the kfunc vtrace patches in, and this kernel's
    verifier takes it and the typed block programs; raw tracepoints where
    VTRACE_STRATEGIES leaves tp_btf out."""
    pts = lab_run["probes"]
    tp = "tp_btf" if lab_run["phase"] == "fentry" else "raw_tracepoint"
    for point, target in (("vring_interrupt", "irq_handler_entry"), ("block_rq_issue", "block_rq_issue"),
                          ("block_rq_complete", "block_rq_complete")):
        p = pts[point]
        assert p["attached"] and p["strategy"] == f"{tp}:{target}" and not p["error"], p


def test_every_host_point_attaches_on_the_newer_kernel(lab_run):
    assert not lab_run["kernel"].startswith("6.1.")
    pts = {n: p for n, p in lab_run["probes"].items() if p["layer"] == "vhost" or n == "admin_cmd"}
    assert set(pts) == VHOST_POINTS | {"admin_cmd"}
    failed = {n: p["error"] for n, p in pts.items() if not p["attached"]}
    assert not failed, failed
    how = {n: p["strategy"] for n, p in pts.items()}
    if lab_run["phase"] == "kprobe":
        assert {s.split(":")[0] for s in how.values()} == {"kprobe"}, how
    else:
        # Unlike 6.1, this kernel's trampoline takes vhost_get_vq_desc's 7
        # arguments: fentry everywhere but the vhost_notify clone.
        assert how == {n: "kprobe:vhost_notify.constprop.0" if n == "signal" else
                       f"fentry:{p['strategy'].split(':', 1)[1]}" for n, p in pts.items()}, how
        assert not any(p["error"] for p in pts.values()), pts
    # virtio_pci is built in with admin commands here (6.1 has none): the admin
    # program loads and attaches, though QEMU 7.2 offers no admin virtqueue to drive it
    assert how["admin_cmd"].endswith(":vp_modern_admin_cmd_exec")
    # 6.12 counts every run it skips: a kprobe's own misses too, through the BPF
    # link vtrace attaches it with (bpf_link_info, 6.7+), so no point says "+?"
    assert not any(p["uncounted"] for p in lab_run["probes"].values() if p["attached"]), lab_run["probes"]


def test_a_kprobe_miss_provoked_on_purpose_is_counted(lab_out):
    """6.7+ reports a kprobe's own misses through its BPF link, where vtrace
    reads each kprobe point's (vtrace/kernel/kprobe.py). kprobe_missed.py makes
    one kprobe fire inside another's handler MISSES times: each is one miss,
    and the inner program never runs."""
    out, run, _kernel = lab_out
    err = out / "kmissed.err"
    assert run.marker("VTRACE-KMISSED") == "0", err.read_text()[-800:] if err.exists() else run.console[-800:]
    res = json.loads((out / "kmissed.json").read_text())
    assert res["linked"] and res["outer_runs"] == MISSES and res["inner_runs"] == 0, res
    assert res["missed"] - res["missed_before"] == MISSES, res


def _vdpa_queues(lab_run):
    rec = lab_run["vdpa"]
    return lab.vm_queues(lab_run["capture"], rec["pid"], [f"q{i}" for i in range(rec["queues"])])


def test_vdpa_queue_lifecycle_matches_the_vmm_exactly(lab_run):
    """Per queue, in order: SET_OWNER; SET_VRING_BASE 0 and SET_VRING_ENABLE 1;
    the device-wide SUSPEND; GET_VRING_BASE with what the VDUSE device
    answered; SET_VRING_ENABLE 0, SET_VRING_BASE back, SET_VRING_ENABLE 1; the
    device-wide RESUME; RELEASE as the VMM exits (its fd closed:
    vhost_dev_cleanup). A SUSPEND or RESUME the kernel refuses records nothing,
    nor does the second SET_OWNER (EBUSY)."""
    rec = lab_run["vdpa"]
    assert rec["owner_again_errno"] == 16 and rec["bases"] == rec["device_avail"]
    assert [r for r in rec["device_requests"] if r[0] == "get_vq_state"] == \
        [["get_vq_state", q, rec["device_avail"][str(q)]] for q in range(rec["queues"])]
    queues = _vdpa_queues(lab_run)
    for q in range(rec["queues"]):
        want = [(Kind.SET_OWNER, 0)]
        for op in rec["ops"]:
            if op[0] in ("suspend", "resume"):
                if op[1] == 0:
                    want.append((Kind.SUSPEND if op[0] == "suspend" else Kind.RESUME, 0))
            elif op[1] == q and op[0] in OP_KIND:
                want.append((OP_KIND[op[0]], op[2]))
        want.append((Kind.RELEASE, 0))
        ev = queues[f"q{q}"]
        got = [(Kind(int(k)), int(i)) for k, i in zip(ev["kind"], ev["id"])]
        assert got == want, (q, got, want)


def test_vdpa_queues_are_named_and_end_released(lab_run):
    rec = lab_run["vdpa"]
    agg = Aggregator()
    Pipeline(ReplaySource(str(lab_run["capture"])), aggregator=agg).run()
    snap = agg.snapshot(close_interval=False)
    mine = [x for x in snap.queues if x.vm == f"python-{rec['pid']}" and x.dev_type == "vdpa"]
    assert {(x.name, x.size) for x in mine} == {(f"q{q}", rec["num"]) for q in range(rec["queues"])}
    suspended = rec["suspend_errno"] == 0
    for x in mine:
        assert x.state == "released", (x.name, x.state)  # the VMM exited
        whats = [e.what for e in x.timeline]
        assert whats == ["set_owner", "set_vring_base", "vring_enable"] + ["suspend"] * suspended + [
            "get_vring_base", "vring_enable", "set_vring_base", "vring_enable"] + ["resume"] * (
            rec["resume_errno"] == 0) + ["release"], (x.name, whats)
        base = rec["bases"][x.name[1:]]
        assert (x.last_suspend.base, x.last_suspend.restored_base) == (base, base)
    p = subprocess.run([sys.executable, "-m", "vtrace.cli", "check", str(lab_run["capture"])],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_vhost_net_rings_match_the_vmm_on_the_newer_kernel(lab_run):
    vmm = lab_run["vmm"]
    q = lab.vm_queues(lab_run["capture"], vmm["pid"], ("rx0", "tx0"))
    tx, rx = q["tx0"], q["rx0"]
    assert tx[tx["kind"] == Kind.FETCH]["id"].tolist() == list(range(TX))
    used = tx[tx["kind"] == Kind.USED]
    assert [[int(i), int(n)] for i, n in zip(used["id"], used["len"])] == vmm["tx"]["used"]
    assert rx[rx["kind"] == Kind.FETCH]["id"].tolist() == list(range(RX + RESTART))
    used = rx[rx["kind"] == Kind.USED]
    assert [[int(i), int(n)] for i, n in zip(used["id"], used["len"])] == vmm["rx"]["used"]
    assert used["len"].tolist() == [12 + f for f in vmm["rx"]["frames"]]
    for name, key in (("tx0", "tx"), ("rx0", "rx")):
        kinds = Counter(Kind(k).name for k in q[name]["kind"].tolist())
        assert (kinds["KICK"], kinds["SIGNAL"]) == (vmm["kicks"][key], vmm["calls"][key]), (name, kinds)
        assert kinds["SET_OWNER"] == 1 and q[name][q[name]["kind"] == Kind.VRING_BASE_GET]["id"].tolist() == \
            [vmm["bases"][key]]
    # its NIC is its net0, on its tap; the vDPA VMM's device its own vdpa0
    _ev, objs = lab.capture_events(lab_run["capture"])
    devs = {(o.vm, o.device, o.backend) for o in objs.values() if o.layer == Layer.VHOST}
    assert {d for d in devs if d[0] == f"python-{vmm['pid']}"} == {(f"python-{vmm['pid']}", "net0", "vt0")}, devs
    assert {d for d in devs if d[0] == f"python-{lab_run['vdpa']['pid']}"} == \
        {(f"python-{lab_run['vdpa']['pid']}", "vdpa0", "")}, devs
