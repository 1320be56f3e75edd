"""vtrace live on real KVM (nested, SVM) in Debian's stock kernel under QEMU.

The lab's TCG CPU offers SVM, so kvm_amd loads in the lab guest and
tests/vmlab/kvm_vfio.py runs the tiny KVM guest there and then adds QEMU's
`edu` device's VFIO group to a VM's KVM-VFIO device. On this machine's own
kernel KVM is PVM: kvm_exit never fires and function probes are refused, so
ioeventfd, irqfd and non-coherent DMA are proven only here, in both attach
strategies (fentry, kprobe), against what the workload did.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.live import kvmguest
from tests.vmlab import lab
from tests.vmlab.test_vfio_live import BIND
from vtrace.events import Kind
from vtrace.live.identity import KVM_TAG  # "KVM" + tgid: a VM's kvm object (probes/kvm.bpf.c)

pytestmark = pytest.mark.vmlab

N_OUT = 41
SVM_EXIT_IOIO = 0x7B  # arch/x86/include/uapi/asm/svm.h: an intercepted IN/OUT
FN_POINTS = {"ioeventfd": "ioeventfd_write", "irqfd": "irqfd_inject",
             "noncoherent_dma": "kvm_arch_register_noncoherent_dma", "kvm:release": "kvm_destroy_vm"}
WORK = f"{sys.executable} tests/vmlab/kvm_vfio.py /out/$1.kvm.json $BDF {N_OUT}"
MODULES = ["kvm", "kvm_amd", "vfio", "vfio_iommu_type1", "vfio-pci"]


def _boot(tmp_path_factory, name: str, iommu: str, phases: dict[str, str]):
    d = tmp_path_factory.mktemp(name)
    out, run = lab.run_host_root(d, MODULES, BIND + lab.capture_phases(sys.executable, WORK, phases=phases),
                                 ["-device", iommu, "-device", "edu"], append="intel_iommu=on")
    assert run.marker("VTRACE-EDU-BOUND") == "vfio-pci", run.console[-1500:]
    return out, run


@pytest.fixture(scope="module")
def lab_out(tmp_path_factory):
    return _boot(tmp_path_factory, "kvm-lab", "intel-iommu,intremap=on", lab.STRATEGY_PHASES)


@pytest.fixture(scope="module", params=list(lab.STRATEGY_PHASES))
def lab_run(request, lab_out):
    out, run = lab_out
    ph = request.param
    lab.check_phase(run, out, ph, "the KVM workload")
    work = json.loads((out / f"{ph}.kvm.json").read_text())
    ev, objs = lab.capture_events(out / f"{ph}.vtrace")
    return {"phase": ph, "work": work, "ev": ev, "objs": objs, "probes": lab.probe_table(out, ph)}


def _kind(lab_run, kind: Kind, *, mine: bool = True) -> np.ndarray:
    ev = lab_run["ev"]
    ev = ev[ev["kind"] == kind]
    return ev[ev["pid"] == lab_run["work"]["pid"]] if mine else ev


def test_kvm_points_attach(lab_run):
    pts, how = lab_run["probes"], lab_run["phase"]
    for name in ("exit", "pio", "userspace_exit", "set_irq", "msi", *FN_POINTS):
        assert pts[name]["attached"], pts[name]
    assert {n: pts[n]["strategy"] for n in FN_POINTS} == {n: f"{how}:{fn}" for n, fn in FN_POINTS.items()}


def test_each_vm_destroyed_is_released_once(lab_run):
    """The workload made two VMs (the tiny guest's, the KVM-VFIO device's) and
    closed every fd of both before it ended: each kvm_destroy_vm is one RELEASE
    on the process's VM object, whichever task dropped the last reference."""
    ev = lab_run["ev"]
    rel = ev[ev["kind"] == Kind.RELEASE]
    assert rel["obj"].tolist() == [KVM_TAG | lab_run["work"]["pid"]] * 2, rel


def test_exits_port_writes_and_the_ioeventfd(lab_run):
    w = lab_run["work"]
    assert w["pio_exits"] == N_OUT and w["ioeventfd_count"] == 1
    pio = _kind(lab_run, Kind.KVM_PIO)
    assert (pio["id"] == kvmguest.PORT_OUT).sum() == N_OUT and (pio["id"] == kvmguest.PORT_EVENTFD).sum() == 1
    # the ioeventfd took its write in the kernel: one event, its port and width, no user-space exit
    ioe = _kind(lab_run, Kind.KVM_IOEVENTFD)
    assert ioe["arg"].tolist() == [kvmguest.PORT_EVENTFD] and ioe["len"].tolist() == [1]
    ue = _kind(lab_run, Kind.KVM_USERSPACE_EXIT)
    assert ue.size == N_OUT + 1 and set(ue["id"].tolist()) == {kvmguest.KVM_EXIT_IO}  # + the done port
    # SVM intercepts every OUT: the N, the ioeventfd's and the done port's
    ex = _kind(lab_run, Kind.KVM_EXIT)
    assert (ex["id"] == SVM_EXIT_IOIO).sum() == N_OUT + 2, np.unique(ex["id"], return_counts=True)


def test_irqfd_names_the_vm_not_the_kworker(lab_run):
    pid = lab_run["work"]["pid"]
    fd = _kind(lab_run, Kind.KVM_IRQFD, mine=False)
    fd = fd[fd["obj"] == (KVM_TAG | pid)]
    assert fd["id"].tolist() == [kvmguest.IRQ_GSI]
    assert int(fd["pid"][0]) != pid  # irqfd_inject runs in a kworker
    irq = _kind(lab_run, Kind.KVM_SET_IRQ, mine=False)
    irq = irq[(irq["id"] == kvmguest.IRQ_GSI) & (irq["ts"] >= fd["ts"][0])]
    assert irq["aux"].tolist()[:2] == [1, 0]  # raised, then lowered (a edge on the userspace source)


def test_noncoherent_dma_when_the_iommu_does_not_snoop(lab_run):
    # QEMU's VT-d model without snoop-control=on has no ECAP.SC, so type1 cannot
    # set IOMMU_CACHE and VFIO_DMA_CC_IOMMU says 0: KVM must register the VM as
    # doing non-coherent DMA when the group joins, and unregister when it leaves.
    assert lab_run["work"]["coherent"] == 0
    reg = _kind(lab_run, Kind.NONCOHERENT_DMA_REGISTER)
    unreg = _kind(lab_run, Kind.NONCOHERENT_DMA_UNREGISTER)
    assert reg.size == 1 and unreg.size == 1 and reg["ts"][0] < unreg["ts"][0]


def test_no_noncoherent_dma_when_the_iommu_snoops(tmp_path_factory):
    # The same workload with QEMU's VT-d told to offer snoop control (ECAP.SC):
    # type1's domain enforces coherency, VFIO_DMA_CC_IOMMU says 1, and KVM keeps
    # the VM coherent. One strategy is enough: this is about the kernel's choice.
    phases = {"fentry": lab.STRATEGY_PHASES["fentry"]}
    out, run = _boot(tmp_path_factory, "kvm-lab-snoop", "intel-iommu,intremap=on,snoop-control=on", phases)
    lab.check_phase(run, out, "fentry", "the KVM workload")
    work = json.loads((out / "fentry.kvm.json").read_text())
    assert work["coherent"] == 1
    ev, _objs = lab.capture_events(out / "fentry.vtrace")
    mine = ev[ev["pid"] == work["pid"]]
    assert (mine["kind"] == Kind.KVM_IOEVENTFD).sum() == 1  # traced while it ran
    assert lab.probe_table(out, "fentry")["noncoherent_dma"]["attached"]
    assert not np.isin(ev["kind"], [Kind.NONCOHERENT_DMA_REGISTER, Kind.NONCOHERENT_DMA_UNREGISTER]).any()


def test_kvm_events_belong_to_the_vmm(lab_run):
    pid = lab_run["work"]["pid"]
    objs = lab_run["objs"]
    obj = KVM_TAG | pid
    assert objs[obj].dev_type == "kvm" and objs[obj].vm == f"python-{pid}" and objs[obj].pid == pid
