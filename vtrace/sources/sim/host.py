"""SimHost: the simulated host's topology — VMs, their net/blk/vsock devices
and queues, VFs and vfio objects, the object identities a capture records —
and the tick that runs every queue and the scenario in time order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vtrace.events import RECORD_DTYPE, Layer, ObjectInfo
from vtrace.sources.sim import payloads
from vtrace.sources.sim.config import (F_ACCESS_PLATFORM, F_EVENT_IDX, F_IN_ORDER, F_RING_RESET, F_SUSPEND,
                                       F_VERSION_1, T0, SimConfig)
from vtrace.sources.sim.queues import QueueLink, RxQueue, SimQueue, TxQueue
from vtrace.sources.sim.scenario import Scenario
from vtrace.sources.sim.tick import TickEvents

VM_NAMES = ("web1", "web2", "db1", "cache1", "build1", "mail1", "ci1", "batch1")


@dataclass
class SimDevice:
    vm: int
    info: ObjectInfo  # device-level object (queue = NO_QUEUE)
    queues: list
    suspendable: bool = True


@dataclass
class SimVM:
    name: str
    pid: int
    kvm_obj: int
    devices: list = field(default_factory=list)
    vf_member: int = 0  # SR-IOV member id of its VF, 0 = none
    noncoherent: bool = False


class SimHost:
    """The simulated host: VMs, devices, queues; ``tick`` runs them and the scenario."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.seeds = np.random.SeedSequence(cfg.seed)
        self.rng = np.random.default_rng(self.seeds.spawn(1)[0])
        self._next_ptr = 0xFFFF8881_00000000
        self.objects: list[ObjectInfo] = []
        self.vms: list[SimVM] = []
        self.queues: list[SimQueue] = []
        self._build()
        self.pending: np.ndarray = np.zeros(0, dtype=RECORD_DTYPE)
        self.t = T0
        # after the topology: it adds the PF's admin queue and draws from the same seed
        self.scenario = Scenario(self)

    def ptr(self, align: int = 0x1000) -> int:
        """A fresh kernel-pointer-like object id."""
        ptr = self._next_ptr
        self._next_ptr += align
        return ptr

    def _obj(self, **kw) -> ObjectInfo:
        info = ObjectInfo(obj=self.ptr(), **kw)
        self.objects.append(info)
        return info

    def child_rng(self) -> np.random.Generator:
        """A generator of its own, spawned from the host's seed (order matters)."""
        return np.random.default_rng(self.seeds.spawn(1)[0])

    def _build(self) -> None:
        cfg = self.cfg
        scale = cfg.scale
        for vm_index in range(cfg.vms):
            name = VM_NAMES[vm_index] if vm_index < len(VM_NAMES) else f"vm{vm_index + 1}"
            vm = SimVM(name=name, pid=4100 + 37 * vm_index, kvm_obj=self.ptr(0x10000))
            self.objects.append(ObjectInfo(obj=vm.kvm_obj, vm=name, device="kvm", dev_type="kvm",
                                           layer=Layer.KVM, pid=vm.pid))
            self.vms.append(vm)
            gsi = 24
            faults = cfg.faults
            # The VM's net device is an SR-IOV VF of the PF whose admin queue the
            # host drives (every other VM); its member id ties the two together.
            member = vm_index // 2 + 1 if cfg.admin and vm_index % 2 == 0 else 0
            if cfg.workload in ("mixed", "net"):
                # Faults that need buffers held at stop use a prefetching RX
                # (seed 004): on a VF for devmode_inflight, elsewhere for the
                # others (so DEV_MODE_SET does not see them too).
                prefetch = (cfg.rx_prefetch
                            or (bool(faults & {"inflight_at_stop", "lost_after_resume"}) and member == 0)
                            or ("devmode_inflight" in faults and member > 0))
                feats = F_VERSION_1 | F_EVENT_IDX | F_ACCESS_PLATFORM | F_RING_RESET | F_SUSPEND
                if not prefetch:
                    feats |= F_IN_ORDER  # vhost-net uses buffers in order; a prefetching vDPA NIC may not
                dev = self._obj(vm=name, device="net0", dev_type="net", layer=Layer.VHOST,
                                pid=vm.pid, features=feats, member=member)
                queues = []
                for pair in range(cfg.net_pairs):
                    for is_tx, qname in ((0, f"rx{pair}"), (1, f"tx{pair}")):
                        info = self._obj(vm=name, device="net0", dev_type="net", queue=2 * pair + is_tx,
                                         name=qname, size=cfg.ring, layer=Layer.VHOST, pid=vm.pid,
                                         features=feats, member=member)
                        link = QueueLink(vm.kvm_obj, 0xFE000000 + 0x1000 * vm_index + 4 * info.queue, gsi)
                        gsi += 1
                        if is_tx == 0:
                            queue = RxQueue(info, self.child_rng(), link, 2_800 * scale, buf_size=4096,
                                            packet=payloads.net_packet, prefetch=prefetch, faults=faults)
                        else:
                            queue = TxQueue(info, self.child_rng(), link, 2_200 * scale, batch_mean=6,
                                            in_order=True, request=payloads.net_tx_request,
                                            service_ns=payloads.lognormal(9_000, 0.35), faults=faults)
                        queues.append(queue)
                vm.devices.append(SimDevice(vm_index, dev, queues))
            if cfg.workload in ("mixed", "blk"):
                feats = F_VERSION_1 | F_EVENT_IDX | F_ACCESS_PLATFORM
                dev = self._obj(vm=name, device="blk0", dev_type="blk", layer=Layer.VHOST,
                                pid=vm.pid, features=feats)
                queues = []
                for qnum in range(cfg.blk_queues):
                    info = self._obj(vm=name, device="blk0", dev_type="blk", queue=qnum, name=f"req.{qnum}",
                                     size=cfg.ring, layer=Layer.VHOST, pid=vm.pid, features=feats)
                    link = QueueLink(vm.kvm_obj, 0xFE800000 + 0x1000 * vm_index + 4 * qnum, gsi)
                    gsi += 1
                    queues.append(TxQueue(info, self.child_rng(), link, 1_500 * scale * (1 + vm_index % 2),
                                          batch_mean=3, in_order=False, request=payloads.blk_request,
                                          service_ns=payloads.lognormal(85_000, 0.7), wake_ns=6_000,
                                          signal_window_ns=20_000, faults=faults))
                vm.devices.append(SimDevice(vm_index, dev, queues, suspendable=False))
            if cfg.workload == "mixed":
                feats = F_VERSION_1 | F_EVENT_IDX
                dev = self._obj(vm=name, device="vsock0", dev_type="vsock", layer=Layer.VHOST,
                                pid=vm.pid, features=feats)
                queues = []
                for qnum, qname in enumerate(("rx", "tx", "event")):
                    info = self._obj(vm=name, device="vsock0", dev_type="vsock", queue=qnum, name=qname,
                                     size=128, layer=Layer.VHOST, pid=vm.pid, features=feats)
                    link = QueueLink(vm.kvm_obj, 0xFE900000 + 0x1000 * vm_index + 4 * qnum, gsi)
                    gsi += 1
                    if qname == "rx":
                        queues.append(RxQueue(info, self.child_rng(), link, 100 * scale,
                                              buf_size=payloads.VSOCK_HDR + 4096, packet=payloads.vsock_packet,
                                              prefetch=False, faults=faults))
                    elif qname == "tx":
                        queues.append(TxQueue(info, self.child_rng(), link, 100 * scale, batch_mean=1.5,
                                              in_order=True, request=payloads.vsock_tx_request,
                                              service_ns=payloads.lognormal(6_000, 0.3), faults=faults))
                    else:
                        # vhost-vsock only touches the event queue on transport reset.
                        queues.append(RxQueue(info, self.child_rng(), link, 0.0, buf_size=8,
                                              packet=payloads.vsock_packet, prefetch=False))
                vm.devices.append(SimDevice(vm_index, dev, queues, suspendable=False))
            if member:
                vm.vf_member = member
                # The VM's vfio container: DMA map/unmap land here.
                self.objects.append(ObjectInfo(obj=vm.kvm_obj + 0x100, vm=name, device="vfio",
                                               dev_type="vfio", layer=Layer.VFIO, pid=vm.pid))
                # The VF's vfio_device, which migrates with the VM (MIGRATION_STATE).
                self.objects.append(ObjectInfo(obj=vm.kvm_obj + 0x200, vm=name, device=f"vfio-vf{member}",
                                               dev_type="vfio", layer=Layer.VFIO, pid=vm.pid))
            vm.noncoherent = cfg.admin and vm_index == 2  # one VF behind an IOMMU without snoop control
            for device in vm.devices:
                self.queues.extend(device.queues)

    def reset_queue(self, queue: SimQueue, t: int) -> None:
        """A reset takes back everything the queue had scheduled: events
        generated ahead of time (a stalled device's future fetches, pending
        completions) must not appear after it."""
        queue.reset(t)
        pending = self.pending
        if pending.size:
            mine = pending["obj"] == queue.info.obj
            if queue.link is not None:
                mine |= (pending["obj"] == queue.link.kvm_obj) & (pending["queue"] == queue.info.queue)
            self.pending = pending[~(mine & (pending["ts"] >= t))]

    def tick(self, t0: int, t1: int) -> np.ndarray:
        """The events of [t0, t1) in time order; later ones are held for the next tick."""
        out = TickEvents()
        scenario = self.scenario
        scenario.begin(out, t0)
        for queue in self.queues:
            queue.step(out, t0, t1)
        scenario.traffic(out, t0, t1)
        events = out.build()
        if self.pending.size:
            events = np.concatenate((self.pending, events))
        events = events[np.argsort(events["ts"], kind="stable")]
        cut = int(np.searchsorted(events["ts"], t1))
        self.pending = events[cut:]  # generated ahead of the tick end: held for order
        return events[:cut]

    def in_flight(self) -> dict[int, int]:
        return {queue.info.obj: queue.in_flight() for queue in self.queues}
