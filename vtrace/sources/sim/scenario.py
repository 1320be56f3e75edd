"""The simulated host's scenario beyond queue traffic: vfio setup of the VFs,
virtio admin commands through the PF's admin queue (answered by the
reference model's admin device), kvm exits and vIOMMU DMA maps, and the
lifecycle schedule — suspend/resume with the VF's migration (DEV_MODE_SET,
device parts, the VFIO migration FSM arcs), queue and device resets, and
simulated ring-buffer losses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vtrace import admin as admin_codes
from vtrace import vfio
from vtrace.events import Kind, Layer, ObjectInfo
from vtrace.model import admin as admin_model
from vtrace.sources.sim import payloads
from vtrace.sources.sim.config import FAULT_AT, NS, T0, FaultClock
from vtrace.sources.sim.tick import TickEvents

if TYPE_CHECKING:
    from vtrace.sources.sim.host import SimHost, SimVM

# QEMU's VFIO migration of a VF (hw/vfio/migration.c), as its driver walks the
# kernel's FSM (vfio_mig_get_next_state): (current, requested, next) per arc.
# Out: RUNNING -> STOP_COPY through STOP, then STOP once the data is read; in:
# RESUMING, then RUNNING through STOP.
_STOP, _RUN, _COPY, _RESUME = vfio.MIG_STOP, vfio.MIG_RUNNING, vfio.MIG_STOP_COPY, vfio.MIG_RESUMING
MIGRATE_OUT = ((_RUN, _COPY, _STOP), (_STOP, _COPY, _COPY), (_COPY, _STOP, _STOP))
MIGRATE_IN = ((_STOP, _RESUME, _RESUME), (_RESUME, _RUN, _STOP), (_STOP, _RUN, _RUN))

# QEMU's vfio-pci realize for the VF (hw/vfio/common.c, pci.c): container
# and group, the device fd, its regions and irqs, a look at config space,
# BARs mapped; then guest RAM pinned and mapped for DMA, 4 x 1 GiB.
VFIO_SETUP = ((vfio.FD_CONTAINER, "GET_API_VERSION", 0), (vfio.FD_CONTAINER, "CHECK_EXTENSION", 1),
              (vfio.FD_GROUP, "GROUP_GET_STATUS", 0), (vfio.FD_GROUP, "GROUP_SET_CONTAINER", 0),
              (vfio.FD_CONTAINER, "SET_IOMMU", 0), (vfio.FD_GROUP, "GROUP_GET_DEVICE_FD", 23),
              (vfio.FD_DEVICE, "DEVICE_GET_INFO", 0)) + \
    ((vfio.FD_DEVICE, "DEVICE_GET_REGION_INFO", 0),) * 9 + ((vfio.FD_DEVICE, "DEVICE_GET_IRQ_INFO", 0),) * 5


class Scenario:
    """What happens to the host over time besides its queues' own traffic."""

    def __init__(self, host: SimHost):
        cfg = host.cfg
        self.host = host
        self.cfg = cfg
        self.admin_obj = 0
        if any(vm.vf_member for vm in host.vms):
            # The PF whose admin queue drives the VFs.
            self.admin_obj = host.ptr()
            host.objects.append(ObjectInfo(obj=self.admin_obj, vm="host", device="pf0",
                                           dev_type="admin-queue", name="admin", layer=Layer.VFIO, pid=1))
            self.admin_rng = host.child_rng()
            self.admin_dev = admin_model.AdminDevice(num_vfs=max(vm.vf_member for vm in host.vms))
        self._next_suspend = T0 + int(cfg.suspend_every * NS)
        self._suspend_vm = 0
        self._resume_at: int | None = None
        self._suspended: SimVM | None = None
        self._next_reset = T0 + int(cfg.suspend_every * 1.7 * NS)
        self._next_lost = T0 + int(cfg.lost_every * NS) if cfg.lost_every > 0 else None
        self._started = False
        self._admin_fault_due = FaultClock(cfg.faults).due

    # the tick's two halves: before the queues run, and after -----------------
    def begin(self, out: TickEvents, t0: int) -> None:
        """Setup on the first tick, then the lifecycle schedule."""
        if not self._started:
            self._start(out, t0)
            self._started = True
        if self.cfg.lifecycle:
            self._lifecycle(out, t0)

    def traffic(self, out: TickEvents, t0: int, t1: int) -> None:
        """Admin commands, kvm exits and DMA maps, simulated losses."""
        if self.admin_obj:
            self._admin(out, t0, t1)
        if self.cfg.kvm:
            self._kvm(out, t0, t1)
        if self._next_lost is not None and t0 >= self._next_lost:
            self._next_lost = t0 + int(self.cfg.lost_every * NS)
            out.add(Kind.LOST, [t0], obj=0, pid=0, layer=Layer.VTRACE, arg=int(self.host.rng.integers(1, 500)))

    # admin commands and vIOMMU traffic ----------------------------------------
    def _admin(self, out: TickEvents, t0: int, t1: int) -> None:
        rng = self.admin_rng
        members = [vm.vf_member for vm in self.host.vms if vm.vf_member]
        count = rng.poisson(60 * len(members) * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
        if count:
            ts = np.sort(rng.integers(t0, t1, count))
            ops = rng.choice(np.array([0x2, 0x3, 0x4, 0x5, 0x6, 0x8]), count,
                             p=[0.25, 0.35, 0.1, 0.2, 0.05, 0.05])
            member = rng.choice(np.array(members), count)
            lat = payloads.lognormal(35_000, 0.5)(rng, count)
            faults = {}
            if self._admin_fault_due("admin_unsupported", t0):
                ops[0] = 0x0042  # a reserved opcode the driver should never send
            if self._admin_fault_due("admin_bad_member", t0):
                member[0], faults[0] = 0, "accept"  # SR-IOV member 0 does not exist; accepted anyway
            if self._admin_fault_due("admin_error", t0):
                faults[count - 1] = "busy"
            if self._admin_fault_due("admin_timeout", t0):
                faults[count - 1] = "hang"
            self._admin_cmds(out, ts, ops, member, lat, faults=faults)
        if self.cfg.kvm:
            # vIOMMU map/unmap traffic of the VF-owning VMs through vfio type1.
            for vm in self.host.vms:
                if not vm.vf_member:
                    continue
                maps = rng.poisson(150 * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
                if maps:
                    ts = np.sort(rng.integers(t0, t1, maps))
                    iova = 0x1_0000_0000 + rng.integers(0, 1 << 20, maps) * 0x1000
                    size = rng.choice(np.array([4096, 65536, 2 << 20]), maps)
                    ids = dict(obj=vm.kvm_obj + 0x100, pid=vm.pid, layer=Layer.VFIO)
                    out.add(Kind.DMA_MAP, ts, id=iova & 0xFFFFFFFF, aux2=iova >> 32, aux=3, arg=size, **ids)
                    out.add(Kind.DMA_UNMAP, ts + 40_000, id=iova & 0xFFFFFFFF, aux2=iova >> 32,
                            arg=size, **ids)

    def _admin_cmds(self, out, ts, ops, member, lat, data=None, faults: dict | None = None) -> None:
        """Commands through the PF's admin queue; the model device answers them."""
        count = len(ts)
        ts = np.asarray(ts, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.int64)
        ops = np.asarray(ops, dtype=np.int64)
        member = np.asarray(member, dtype=np.int64)
        data = np.zeros(count, dtype=np.int64) if data is None else np.asarray(data, dtype=np.int64)
        status = np.zeros(count, dtype=np.int64)
        qual = np.zeros(count, dtype=np.int64)
        done = np.ones(count, dtype=bool)
        for cmd in range(count):
            result = self.admin_dev.execute(int(ops[cmd]), admin_codes.GROUP_SRIOV, int(member[cmd]),
                                            int(data[cmd]))
            fault = (faults or {}).get(cmd)
            if fault == "accept":
                result = admin_model.OK
            elif fault == "busy":
                result = admin_model.AdminResult(admin_codes.STATUS_EAGAIN, admin_codes.Q_TRYAGAIN)
            elif fault == "hang":
                done[cmd] = False
            status[cmd], qual[cmd] = result.status, result.qualifier
        ids = dict(obj=self.admin_obj, pid=1, layer=Layer.VFIO)
        out.add(Kind.ADMIN_SUBMIT, ts, id=ops, len=data, aux=admin_codes.GROUP_SRIOV, aux2=member, **ids)
        out.add(Kind.ADMIN_COMPLETE, (ts + lat)[done], id=ops[done], len=status[done],
                aux=admin_codes.GROUP_SRIOV, aux2=qual[done], arg=lat[done], **ids)

    # kvm ------------------------------------------------------------------------
    def _kvm(self, out: TickEvents, t0: int, t1: int) -> None:
        rng = self.host.rng
        for vm in self.host.vms:
            count = rng.poisson(400 * max(self.cfg.scale, 0.05) * (t1 - t0) / NS)
            if count:
                ts = np.sort(rng.integers(t0, t1, count))
                # VMX basic exit reasons (SDM vol. 3C, appendix C): external
                # interrupt, HLT, I/O, MSR write, EPT violation/misconfig.
                reason = rng.choice(np.array([1, 12, 30, 32, 48, 49]), count,
                                    p=[0.25, 0.3, 0.05, 0.15, 0.15, 0.1])
                out.add(Kind.KVM_EXIT, ts, id=reason, obj=vm.kvm_obj, pid=vm.pid, layer=Layer.KVM)
                pio = ts[reason == 30]
                out.add(Kind.KVM_PIO, pio + 100, id=0x70, len=1, aux=1, obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)
                out.add(Kind.KVM_USERSPACE_EXIT, pio + 200, id=2, obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)

    # setup -------------------------------------------------------------------------
    def _start(self, out: TickEvents, t: int) -> None:
        if not self.cfg.kvm:
            return
        for vm in self.host.vms:
            if vm.vf_member:
                self._vfio_setup(out, t, vm)
            if vm.noncoherent:
                # kvm_arch_register_noncoherent_dma: the IOMMU cannot enforce
                # snoop, so guest memory types are honoured (seed 003).
                out.add(Kind.NONCOHERENT_DMA_REGISTER, [t + 300_000], obj=vm.kvm_obj, pid=vm.pid,
                        layer=Layer.KVM)

    def _vfio_setup(self, out: TickEvents, t: int, vm: SimVM) -> None:
        ids = dict(obj=vm.kvm_obj + 0x100, pid=vm.pid, layer=Layer.VFIO)
        count = len(VFIO_SETUP)
        ts = t + 100 + np.arange(count) * 2_000
        out.add(Kind.VFIO_IOCTL, ts, id=[vfio.CMDS[fd][name] for fd, name, _ret in VFIO_SETUP],
                aux=[fd for fd, _name, _ret in VFIO_SETUP], arg=[ret for _fd, _name, ret in VFIO_SETUP],
                aux2=1_500, **ids)
        # config space: the header, 4 bytes at a time, through the config region (7)
        cfg_off = np.arange(16, dtype=np.int64) * 4
        out.add(Kind.VFIO_REGION_RW, ts[-1] + 1_000 + cfg_off * 500, id=7, len=4, arg=cfg_off, **ids)
        out.add(Kind.VFIO_MMAP, [ts[-1] + 50_000], id=0, arg=1 << 20, **ids)
        ts = t + 100_000 + np.arange(4) * 50_000
        iova = np.arange(4, dtype=np.int64) << 30
        out.add(Kind.VFIO_IOCTL, ts - 1, id=vfio.CMDS[vfio.FD_CONTAINER]["IOMMU_MAP_DMA"], aux=vfio.FD_CONTAINER,
                aux2=45_000, **ids)
        out.add(Kind.DMA_MAP, ts, id=iova & 0xFFFFFFFF, aux2=iova >> 32, aux=3 | 8, arg=1 << 30, **ids)

    # lifecycle: suspend/resume with migration, resets ---------------------------------
    def _lifecycle(self, out: TickEvents, t0: int) -> None:
        cfg = self.cfg
        if self._suspended is not None and self._resume_at is not None and t0 >= self._resume_at:
            self._resume(out, t0, self._suspended)
        if t0 >= self._next_suspend and self._suspended is None:
            vm = self.host.vms[self._suspend_vm % len(self.host.vms)]
            self._suspend_vm += 1
            self._next_suspend = t0 + int(cfg.suspend_every * NS)
            if any(dev.suspendable for dev in vm.devices):
                self._suspend(out, t0, vm)
        if t0 >= self._next_reset:
            self._next_reset = t0 + int(cfg.suspend_every * 1.7 * NS)
            self._reset(out, t0)

    def _resume(self, out: TickEvents, t0: int, vm: SimVM) -> None:
        resume_t = t0
        if vm.vf_member and self.admin_obj:
            # DEV_PARTS_SET restores the VF's state (RESUMING), DEV_MODE_SET(0)
            # runs it (RESUMING -> STOP -> RUNNING).
            self._migration(out, vm, [t0 - 1_000, t0 + 460_000, t0 + 499_000], MIGRATE_IN)
            self._admin_cmds(out, [t0, t0 + 500_000], np.array([0x10, 0x11]),
                             np.array([vm.vf_member] * 2), np.array([450_000, 60_000]))
            resume_t = t0 + 600_000
        for dev in vm.devices:
            if dev.suspendable:
                out.add(Kind.RESUME, [resume_t], obj=dev.info.obj, pid=vm.pid, layer=dev.info.layer)
                for queue in dev.queues:
                    queue.start(out, resume_t + 2_000)
        self._suspended = self._resume_at = None

    def _suspend(self, out: TickEvents, t0: int, vm: SimVM) -> None:
        faults = self.cfg.faults
        # A healthy device drains before it reports suspended (1.4
        # "Device Suspension": stop consuming, complete what is in
        # flight); the faulty ones stop with buffers held.
        freeze = bool(faults & {"inflight_at_stop", "lost_after_resume"})
        queues = [queue for dev in vm.devices if dev.suspendable for queue in dev.queues]
        devmode_early = bool(vm.vf_member and self.admin_obj and "devmode_inflight" in faults
                             and t0 >= FAULT_AT)
        if devmode_early:
            # DEV_MODE_SET(stopped) while the VF still holds buffers.
            self._migration(out, vm, [t0 - 1_000], MIGRATE_OUT[:1])
            self._admin_cmds(out, [t0], [0x11], [vm.vf_member], [55_000], data=[admin_model.F_STOPPED])
        stop_t = t0 + 60_000 if devmode_early else t0  # after the command completed
        for queue in queues:
            stop_t = max(stop_t, t0 if freeze else queue.drain(out, t0))
        for dev in vm.devices:
            if dev.suspendable:
                # VHOST_VDPA_SUSPEND (recorded when it returns), then
                # GET_VRING_BASE per queue: what QEMU does at migration stop.
                out.add(Kind.SUSPEND, [stop_t + 1_000], obj=dev.info.obj, pid=vm.pid, layer=dev.info.layer)
        for queue in queues:
            queue.stop(out, stop_t + 2_000)
        if vm.vf_member and self.admin_obj and not devmode_early:
            # DEV_MODE_SET(stopped), DEV_PARTS_METADATA_GET, DEV_PARTS_GET.
            cmd_t = stop_t + 5_000
            # the first arc is DEV_MODE_SET(stopped), the second the parts reads
            self._migration(out, vm, [cmd_t - 1_000, cmd_t + 74_000, cmd_t + 1_040_000], MIGRATE_OUT)
            self._admin_cmds(out, [cmd_t, cmd_t + 75_000, cmd_t + 135_000],
                             np.array([0x11, 0x0E, 0x0F]), np.array([vm.vf_member] * 3),
                             np.array([55_000, 40_000, 900_000]), data=[admin_model.F_STOPPED, 0, 0])
        self._suspended = vm
        self._resume_at = t0 + int(self.cfg.suspend_for * NS)

    def _reset(self, out: TickEvents, t0: int) -> None:
        # Alternate a TX queue reset (VIRTIO_F_RING_RESET) and a vsock
        # device reset; both reclaim in-flight buffers.
        host = self.host
        vm = host.vms[int(host.rng.integers(0, len(host.vms)))]
        if vm is self._suspended:
            return
        for dev in vm.devices:
            if dev.info.dev_type == "net" and (t0 // NS) % 2 == 0:
                queue = dev.queues[1]
                out.add(Kind.QUEUE_RESET, [t0], **queue.common())
                host.reset_queue(queue, t0)
                return
            if dev.info.dev_type == "vsock":
                out.add(Kind.RESET, [t0], obj=dev.info.obj, pid=vm.pid, layer=dev.info.layer)
                for queue in dev.queues:
                    host.reset_queue(queue, t0)
                return

    @staticmethod
    def _migration(out: TickEvents, vm: SimVM, ts: list[int], arcs: tuple[tuple[int, int, int], ...]) -> None:
        cur, new, nxt = zip(*arcs)
        out.add(Kind.MIGRATION_STATE, ts, id=list(new), aux=list(cur), aux2=list(nxt), obj=vm.kvm_obj + 0x200,
                pid=vm.pid, layer=Layer.VFIO)
