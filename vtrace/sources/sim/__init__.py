"""The simulated host (``--source sim``): a deterministic virtualization host.

Produces the event stream host-side probes would see: per virtqueue the
device's descriptor fetches and used-ring writes, the driver's kicks (and the
ones EVENT_IDX suppressed), the device's signal decisions, notification
enable/disable around processing sessions, the matching kvm ioeventfd/irqfd
events, vhost-vdpa suspend/resume with GET/SET_VRING_BASE, queue and device
resets, virtio admin commands issued for SR-IOV VFs (legacy config access,
device parts, DEV_MODE_SET around migration) with the VF's VFIO migration
FSM arcs, and vfio DMA maps.

Everything is generated with numpy per queue per tick (10 ms of simulated
time), so the simulator reaches millions of events per second of simulated
time. The same seed gives the same stream, byte for byte.

Where the spec decides, the device follows the reference model
(``vtrace.model``): its signal decisions are ``vring_need_event``, admin
commands are answered by the model's ``AdminDevice``, header sizes come from
``model.devtypes``. Timing, workload shapes and the fault switches are the
simulator's own.

Modules: ``config`` (SimConfig, clock, faults), ``queues`` (per-queue
workload generators), ``payloads`` (request shapes), ``host`` (topology and
the tick), ``scenario`` (admin, kvm, vfio, migration, lifecycle), ``source``
(SimSource), ``tick`` (the per-tick event collector).
"""

from vtrace.sources.sim.config import FAULT_AT, FAULTS, NS, T0, TICK_NS, FaultClock, SimConfig
from vtrace.sources.sim.host import SimHost
from vtrace.sources.sim.source import SimSource

__all__ = ["FAULTS", "FAULT_AT", "NS", "T0", "TICK_NS", "FaultClock", "SimConfig", "SimHost", "SimSource"]
