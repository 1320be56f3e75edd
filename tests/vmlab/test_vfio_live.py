"""vtrace live on real VFIO and a real (emulated) IOMMU, in Debian's stock kernel under QEMU.

The lab guest gets QEMU's Intel IOMMU and its `edu` PCI device; the test
binds edu to vfio-pci and tests/vmlab/vfio_edu.py drives it from user space
the way a VMM drives an assigned device: container, group, device fd,
region info, config space, BAR reads/writes, a BAR mmap, a DMA mapping, and
a DMA round trip by the device through the IOMMU. The driver writes down
every ioctl and region access it made; vtrace's capture must hold exactly
those, in order, with the DMA mapping's size both at vfio (type1) and at the
IOMMU (iommu:map/unmap tracepoints).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.vmlab import lab
from vtrace import vfio
from vtrace.events import UNOBSERVED, Kind, Layer

pytestmark = pytest.mark.vmlab

ROOT = Path(__file__).resolve().parents[2]
EDU = "0x1234:0x11e8"  # QEMU's educational device (vendor:device)
POINTS = {"container_ioctl": "vfio_fops_unl_ioctl", "group_ioctl": "vfio_group_fops_unl_ioctl",
          "device_ioctl": "vfio_device_fops_unl_ioctl", "region_read": "vfio_device_fops_read",
          "region_write": "vfio_device_fops_write", "mmap": "vfio_device_fops_mmap", "dma": "vfio_iommu_type1_ioctl"}
BIND = f"""
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = "{EDU}" ] && BDF=$(basename $d); done
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override && echo $BDF > /sys/bus/pci/drivers_probe
echo VTRACE-EDU-BOUND $(basename $(readlink /sys/bus/pci/devices/$BDF/driver))
"""
# tests/vmlab/migdev's module: a VFIO device that migrates through the kernel's FSM.
# busybox's insmod: the guest runs the host's userland, which may have no kmod (CI's has none)
LOAD_MIG = """
/bin/busybox insmod /out/vtrace_mig.ko && echo VTRACE-MIG-LOADED $(basename $(readlink /sys/devices/platform/vtrace_mig/iommu_group))
"""
SCRIPT = BIND + LOAD_MIG + lab.capture_phases(
    sys.executable, f"({sys.executable} tests/vmlab/vfio_edu.py /out/$1.edu.json $BDF && "
    f"{sys.executable} tests/vmlab/vfio_mig.py /out/$1.mig.json)")
FD = {"container": vfio.FD_CONTAINER, "group": vfio.FD_GROUP, "device": vfio.FD_DEVICE}


@pytest.fixture(scope="module")
def lab_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("vfio-lab")
    ko = lab.build_module(lab.stock_kernel(), ROOT / "tests" / "vmlab" / "migdev", d)
    out, run = lab.run_host_root(d, ["vfio", "vfio_iommu_type1", "vfio-pci"], SCRIPT,
                                 ["-device", "intel-iommu,intremap=on", "-device", "edu"], append="intel_iommu=on",
                                 files=(ko,))
    assert run.marker("VTRACE-EDU-BOUND") == "vfio-pci", run.console[-1500:]
    assert (run.marker("VTRACE-MIG-LOADED") or "").isdigit(), run.console[-1500:]
    return out, run


@pytest.fixture(scope="module", params=list(lab.STRATEGY_PHASES))
def lab_run(request, lab_out):
    out, run = lab_out
    ph = request.param
    lab.check_phase(run, out, ph, "the edu driver")
    edu = json.loads((out / f"{ph}.edu.json").read_text())
    ev, objs = lab.capture_events(out / f"{ph}.vtrace")
    mig = json.loads((out / f"{ph}.mig.json").read_text())
    return {"phase": ph, "edu": edu, "ev": ev[ev["pid"] == edu["pid"]], "objs": objs, "mig": mig,
            "mig_ev": ev[ev["pid"] == mig["pid"]],
            "capture": out / f"{ph}.vtrace",
            "probes": lab.probe_table(out, ph)}


def _kind(lab_run, kind: Kind) -> np.ndarray:
    ev = lab_run["ev"]
    return ev[ev["kind"] == kind]


def test_vfio_points_attach(lab_run):
    pts, how = lab_run["probes"], lab_run["phase"]
    failed = {n: pts[n].get("error") for n in POINTS if not pts[n]["attached"]}
    assert not failed, failed
    assert {n: pts[n]["strategy"] for n in POINTS} == {n: f"{how}:{fn}" for n, fn in POINTS.items()}
    assert pts["map"]["attached"] and pts["unmap"]["attached"]  # iommu tracepoints


def test_every_ioctl_in_order_with_its_fd_and_result(lab_run):
    io = _kind(lab_run, Kind.VFIO_IOCTL)
    want = [(FD[x["file"]], x["cmd"], x["ret"]) for x in lab_run["edu"]["ioctls"]]
    got = list(zip(io["aux"].tolist(), io["id"].tolist(), io["arg"].tolist()))
    assert got == want, [(vfio.ioctl_name(f, c), r) for f, c, r in got]
    assert set(io["len"].tolist()) == {0}  # no errno
    assert (io["aux2"] > 0).all()  # each has a latency
    names = [vfio.ioctl_name(f, c) for f, c, _r in got]
    assert names[:6] == ["GET_API_VERSION", "CHECK_EXTENSION", "GROUP_GET_STATUS", "GROUP_SET_CONTAINER",
                         "SET_IOMMU", "GROUP_GET_DEVICE_FD"]
    assert "IOMMU_MAP_DMA" in names and "IOMMU_UNMAP_DMA" in names and "DEVICE_GET_REGION_INFO" in names


def test_every_region_access_in_order(lab_run):
    rw = _kind(lab_run, Kind.VFIO_REGION_RW)
    want = [(a["region"], a["offset"], a["size"], a["write"]) for a in lab_run["edu"]["accesses"]]
    got = list(zip(rw["id"].tolist(), rw["arg"].tolist(), rw["len"].tolist(), rw["aux"].tolist()))
    assert got == want
    assert set(rw["aux2"].tolist()) == {0}
    # config space (region 7) was read and written: vendor/device, command
    assert (vfio.REGIONS[7], 0, 4, 0) == (vfio.region_name(got[0][0]), *got[0][1:])


def test_the_bar_mmap(lab_run):
    mm = _kind(lab_run, Kind.VFIO_MMAP)
    want = lab_run["edu"]["mmaps"]
    assert [(int(m["id"]), int(m["arg"]), int(m["aux"]), int(m["len"])) for m in mm] == \
        [(x["region"], x["size"], 0, 0) for x in want]


def _during(lab_run, name: str) -> np.ndarray:
    """The IOMMU's events while the driver's one ``name`` ioctl ran (its
    return timestamp minus its latency, to its return)."""
    io = _kind(lab_run, Kind.VFIO_IOCTL)
    hit = [i for i, (f, c) in enumerate(zip(io["aux"].tolist(), io["id"].tolist())) if vfio.ioctl_name(f, c) == name]
    assert len(hit) == 1, name
    end = int(io["ts"][hit[0]])
    ev = lab_run["ev"]
    return ev[(ev["layer"] == Layer.IOMMU) & (ev["ts"] >= end - int(io["aux2"][hit[0]])) & (ev["ts"] <= end)]


def test_dma_mapping_sizes_at_vfio_and_at_the_iommu(lab_run):
    dma = lab_run["edu"]["dma"]
    assert dma["copied"]  # edu's DMA went through the IOMMU mapping and came back
    for kind, ioctl in ((Kind.DMA_MAP, "IOMMU_MAP_DMA"), (Kind.DMA_UNMAP, "IOMMU_UNMAP_DMA")):
        at_vfio = _kind(lab_run, kind)
        at_vfio = at_vfio[at_vfio["layer"] == Layer.VFIO]
        assert len(at_vfio) == 1
        assert ((int(at_vfio["aux2"][0]) << 32) | int(at_vfio["id"][0]), int(at_vfio["arg"][0])) == \
            (dma["iova"], dma["size"])
        # inside that ioctl the IOMMU maps what type1 pinned: one or more
        # physically contiguous runs, together exactly the mapping, inside it
        at_iommu = _during(lab_run, ioctl)
        assert set(at_iommu["kind"].tolist()) == {kind}
        assert int(at_iommu["arg"].sum()) == dma["size"], at_iommu
        iova = (at_iommu["aux2"].astype(np.int64) << 32) | at_iommu["id"]
        assert ((iova >= dma["iova"]) & (iova < dma["iova"] + dma["size"])).all()
    m = _kind(lab_run, Kind.DMA_MAP)
    assert int(m[m["layer"] == Layer.VFIO]["aux"][0]) == 3  # VFIO_DMA_MAP_FLAG_READ | WRITE


def test_iommu_traffic_the_vmm_did_not_ask_for(lab_run):
    """SET_IOMMU attaches the group to a new domain, and type1 then probes it
    for fine-grained superpages (vfio_test_domain_fgsp, 6.1): two pages mapped
    and unmapped again inside the ioctl. vtrace sees it at the IOMMU."""
    ev = _during(lab_run, "SET_IOMMU")
    mapped = int(ev[ev["kind"] == Kind.DMA_MAP]["arg"].sum())
    assert mapped > 0 and int(ev[ev["kind"] == Kind.DMA_UNMAP]["arg"].sum()) == mapped, ev
    # everything else the IOMMU did for the driver happened inside these ioctls
    io = lab_run["ev"]
    assert int((io["layer"] == Layer.IOMMU).sum()) == len(ev) + len(_during(lab_run, "IOMMU_MAP_DMA")) + \
        len(_during(lab_run, "IOMMU_UNMAP_DMA"))


def test_vfio_and_iommu_events_belong_to_the_driver(lab_run):
    objs, ev = lab_run["objs"], lab_run["ev"]
    mine = ev[np.isin(ev["layer"], [Layer.VFIO, Layer.IOMMU])]  # (its 9p reads are guest virtio)
    assert set(mine["obj"].tolist()) <= set(objs)
    vms = {objs[o].vm for o in set(mine["obj"].tolist())}
    assert vms == {f"python-{lab_run['edu']['pid']}"}, vms


@pytest.fixture(scope="module")
def report(lab_run) -> str:
    """`vtrace report` of the phase's capture, once for the tests that read it."""
    p = subprocess.run([sys.executable, "-m", "vtrace.cli", "report", str(lab_run["capture"])],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_report_names_the_ioctls(lab_run, report):
    line = next(ln for ln in report.splitlines() if f"python-{lab_run['edu']['pid']} vfio:" in ln)
    n = len(lab_run["edu"]["accesses"])
    writes = sum(a["write"] for a in lab_run["edu"]["accesses"])
    assert f"{n - writes} region reads, {writes} writes" in line and "1 mmaps" in line, line
    for name in ("GROUP_GET_DEVICE_FD 1", "DEVICE_GET_REGION_INFO 2", "IOMMU_MAP_DMA 1"):
        assert name in line, line


def test_migration_point_attaches(lab_run):
    pts = lab_run["probes"]
    assert pts["migration"]["attached"], pts["migration"].get("error")
    assert pts["migration"]["strategy"] == f"{lab_run['phase']}:vfio_mig_get_next_state"


def test_every_migration_arc_in_order(lab_run):
    """Each request walks the kernel's FSM one arc at a time, and each arc is
    one vfio_mig_get_next_state call: (current state, requested state) and its
    answer, the next state or an errno (PRE_COPY, which the device does not
    offer: EINVAL)."""
    mig, ev = lab_run["mig"], lab_run["mig_ev"]
    m = ev[ev["kind"] == Kind.MIGRATION_STATE]
    want = [(cur, new, UNOBSERVED if nxt is None else nxt, errno.EINVAL if nxt is None else 0)
            for s in mig["steps"] for cur, new, nxt in s["arcs"]]
    assert list(zip(m["aux"].tolist(), m["id"].tolist(), m["aux2"].tolist(), m["len"].tolist())) == want
    assert set(m["layer"].tolist()) == {Layer.VFIO} and len(set(m["obj"].tolist())) == 1
    o = lab_run["objs"][int(m["obj"][0])]
    # named by the device it drives (dev_name: our platform device; a VF's PCI address)
    assert (o.vm, o.device, o.dev_type) == (f"python-{mig['pid']}", "vtrace_mig", "vfio"), o


def test_report_follows_the_migration(lab_run, report):
    line = next(ln for ln in report.splitlines() if f"python-{lab_run['mig']['pid']} migration:" in ln)
    assert line.split("migration: ", 1)[1] == (
        "vtrace_mig RUNNING; 7 FSM arcs, 1 refused; latest: RUNNING->STOP (to STOP_COPY), STOP->STOP_COPY, "
        "STOP_COPY->STOP, "
        "STOP to PRE_COPY refused (EINVAL), STOP->RESUMING, RESUMING->STOP (to RUNNING), STOP->RUNNING"), line
