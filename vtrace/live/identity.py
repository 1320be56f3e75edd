"""Object identity: which VM, device and queue each kernel object the probes name is.

Objects are kernel pointers (a vhost_virtqueue, a virtqueue, a blk-mq
hardware context) or per-process tags (KVM_TAG, IOMMU_TAG, VFIO_TAG: a
three-letter tag and the VMM's tgid). Each is described once, from the
programs' identity maps (vq_info, hq_info, mig_info), read only when a batch
names an object not seen before, in a layer that has such a map. A vhost
queue whose memory a new owner took over gets a new id (``new_lives``).

``Identity`` works on columns (numpy arrays of obj, layer, pid, kind), so it
is tested without a kernel: the identity maps come from ``loaded``, a
callable returning (program name, bcc BPF object) pairs.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np

from vtrace.events import Kind, Layer, ObjectInfo
from vtrace.model.devtypes import DEVICE_IDS

KVM_TAG = 0x4B564D0000000000    # "KVM" + tgid (probes/kvm.bpf.c)
IOMMU_TAG = 0x494F4D0000000000  # "IOM" + tgid (probes/iommu.bpf.c)
VFIO_TAG = 0x5646490000000000   # "VFI" + tgid (probes/vfio.bpf.c)
TAG_MASK = 0xFFFFFF0000000000
_TAGGED = {KVM_TAG: ("kvm", Layer.KVM), IOMMU_TAG: ("iommu", Layer.IOMMU), VFIO_TAG: ("vfio", Layer.VFIO)}


def vm_name(pid: int, comm: str = "", proc: str = "/proc") -> str:
    """The VM's name from the VMM's command line (QEMU: -name guest=web1,... or -name web1).
    A VMM gone before vtrace read its identity (a short run between two reads) is
    ``<comm>-<pid>`` when the probe recorded its comm, else ``pid<N>``; one still
    exiting reads an empty command line and is named by its comm the same way."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"{comm}-{pid}" if comm else f"pid{pid}"
    args = [a.decode(errors="replace") for a in argv if a]
    if not args:  # exiting (its memory, and so its command line, already gone) or a kernel thread
        return f"{comm}-{pid}" if comm else f"?-{pid}"
    for i, a in enumerate(args[:-1]):
        if a in ("-name", "--name"):
            v = args[i + 1]
            for part in v.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            return v.split(",")[0]
    return f"{os.path.basename(args[0])}-{pid}"


def vhost_dev_type(fn: str, module: str) -> str:
    """A vhost device's type from its queue's kick handler: the function's name and module."""
    return ("vsock" if "vsock" in fn else "net" if module == "vhost_net" or "_net" in fn
            else "scsi" if "scsi" in fn else "vdpa" if module == "vhost_vdpa" or "vdpa" in fn
            else "unknown")


class Identity:
    """The objects described so far and the vhost queues' lives.

    ``host``: the VM name of guest-side objects (this machine); ``syms``: the
    kernel's symbols (vhost kick handlers by address); ``loaded``: the
    compiled programs, as (name, bcc BPF object), in order."""

    def __init__(self, host: str, syms=None,
                 loaded: Callable[[], Iterable[tuple[str, object]]] = lambda: ()):
        self.host = host
        self.syms = syms
        self.loaded = loaded
        self.known: set[int] = set()
        # vhost queues whose address a new owner took over (a closed device's
        # memory handed out again): kernel pointer -> the id its events carry
        # now, and the owner each pointer's identity was read for (new_lives)
        self.lives: dict[int, int] = {}
        self.owner_of: dict[int, int] = {}
        self.vhost_devs: dict[tuple[int, int], str] = {}

    # pointer reuse ----------------------------------------------------------------
    def current_ids(self, obj: np.ndarray) -> None:
        """Each taken-over pointer in ``obj`` (changed in place) as the id of its current life."""
        for ptr, now in self.lives.items():
            obj[obj == ptr] = now

    def new_lives(self, obj: np.ndarray, layer: np.ndarray, pid: np.ndarray, kind: np.ndarray,
                  ts: np.ndarray) -> None:
        """Give a vhost queue a new id where a new owner took its address over
        (``obj`` changed in place; the other columns are the same rows' fields).

        Objects are kernel pointers, and a closed vhost device's memory is
        handed out again. A SET_OWNER by another process than the one the
        queue's identity was read for starts a new life: from that event on
        (and in every later batch) its events carry a new id, the pointer with
        its top 16 bits 0xFFFF - generation (kernel pointers have 0xFFFF there,
        vtrace's per-process tags 0x49-0x56), and its identity is read again
        (the probe forgot it, probes/vhost.bpf.c set_owner_return). A SET_OWNER
        by the same owner again (after RESET_OWNER) keeps the queue as it is."""
        self.current_ids(obj)
        owned = np.flatnonzero((kind == Kind.SET_OWNER) & (layer == Layer.VHOST))
        for i in owned.tolist():
            now, owner, t = int(obj[i]), int(pid[i]), int(ts[i])
            ptr = next((p for p, o in self.lives.items() if o == now), now)
            if self.owner_of.get(ptr, owner) == owner:
                self.owner_of[ptr] = owner
                continue
            gen = 0xFFFF - ((now >> 48) & 0xFFFF) + 1
            self.lives[ptr] = new = (ptr & 0xFFFFFFFFFFFF) | ((0xFFFF - gen) << 48)
            self.owner_of[ptr] = owner
            obj[(obj == now) & (ts >= t)] = new

    # descriptions -----------------------------------------------------------------
    def objects(self, obj: np.ndarray, layer: np.ndarray, pid: np.ndarray, kind: np.ndarray) -> list[ObjectInfo]:
        """Identities of objects these rows name for the first time (each object's
        layer, pid and kind taken from its first row). The identity maps are read
        from the kernel only when such an object appears in their layer."""
        if not obj.size:
            return []
        objs, first = np.unique(obj, return_index=True)
        fresh = np.array([o not in self.known for o in objs.tolist()], dtype=bool)
        if not fresh.any():
            return []
        layers = set(layer[first[fresh]].tolist())
        new = []
        for name, bpf in self.loaded():
            if name == "vhost" and Layer.VHOST in layers:
                new.extend(self._vhost_objects(bpf))
            if name in ("virtio", "block") and Layer.VIRTIO_GUEST in layers:
                new.extend(self._guest_objects(name, bpf))
        if layers & {Layer.KVM, Layer.IOMMU, Layer.VFIO}:
            sel = fresh & np.isin(layer[first], [Layer.KVM, Layer.IOMMU, Layer.VFIO])
            for o, p, k in zip(objs[sel].tolist(), pid[first[sel]].tolist(), kind[first[sel]].tolist()):
                if o in self.known:
                    continue
                self.known.add(o)
                new.append(self._process_object(o, p, k))
        return new

    def _process_object(self, obj: int, pid: int, kind: int) -> ObjectInfo:
        """An object of the KVM, IOMMU or VFIO layer, named in its VMM's context."""
        tag = obj & TAG_MASK
        if tag in _TAGGED:  # per-VMM objects: the pid is in the id
            pid = obj & 0xFFFFFFFF
            what, layer = _TAGGED[tag]
            return ObjectInfo(obj=obj, vm=vm_name(pid), device=what, dev_type=what, layer=int(layer), pid=pid)
        if kind in (Kind.ADMIN_SUBMIT, Kind.ADMIN_COMPLETE):  # the PF's virtio_device
            return ObjectInfo(obj=obj, vm=self.host, device=f"pf-{obj & 0xFFFFFF:06x}",
                              dev_type="admin-queue", name="admin", layer=int(Layer.VFIO))
        # a vfio_device changing migration state, in its VMM's context
        return ObjectInfo(obj=obj, vm=vm_name(pid), device=self._vfio_device_name(obj) or f"vfio-{obj & 0xFFFFFF:06x}",
                          dev_type="vfio", layer=int(Layer.VFIO), pid=pid)

    def _guest_objects(self, name: str, bpf) -> list[ObjectInfo]:
        """A guest's virtqueues (virtio: vq_info) or blk-mq hardware queues (block: hq_info)."""
        out = []
        for k, v in bpf[b"vq_info" if name == "virtio" else b"hq_info"].items():
            obj = int(k.value)
            if obj in self.known:
                continue
            self.known.add(obj)
            if name == "virtio":
                dt = DEVICE_IDS.get(int(v.device_id), f"virtio-{int(v.device_id)}")
                out.append(ObjectInfo(obj=obj, vm=self.host, device=f"virtio{int(v.vdev_index)}", dev_type=dt,
                                      queue=int(v.index), name=v.name.decode(errors="replace"),
                                      size=int(v.num_max), layer=int(Layer.VIRTIO_GUEST)))
            else:
                qn = int(v.queue_num)
                out.append(ObjectInfo(obj=obj, vm=self.host, device=v.disk.decode(errors="replace"),
                                      dev_type="blk-mq", queue=qn, name=f"hq{qn}", layer=int(Layer.VIRTIO_GUEST)))
        return out

    def _vfio_device_name(self, obj: int) -> str:
        """A migrating vfio_device's name (dev_name of the device it drives, e.g.
        0000:3b:00.1), as the migration probe read it; empty if it could not."""
        for name, bpf in self.loaded():
            if name == "vfio":
                try:
                    t = bpf[b"mig_info"]
                    v = t[t.Key(obj)]
                except KeyError:
                    return ""
                return v.name.decode(errors="replace")
        return ""

    def _vhost_objects(self, bpf) -> list[ObjectInfo]:
        """vhost queues: the VM from the worker's name (vhost-<owner pid>), the
        driver and queue role from the kick handler's symbol."""
        out = []
        for k, v in bpf[b"vq_info"].items():
            ptr = int(k.value)
            obj = self.lives.get(ptr, ptr)  # its id in this life (new_lives)
            if obj in self.known:
                continue
            self.known.add(obj)
            comm = v.comm.decode(errors="replace")
            worker = comm.startswith("vhost-") and comm[6:].isdigit()
            owner = int(comm[6:]) if worker else int(v.tgid)
            self.owner_of.setdefault(ptr, owner)
            sym = self.syms.name_at(int(v.handle_kick)) if self.syms is not None else None
            fn = sym.name if sym else ""
            dev_type = vhost_dev_type(fn, sym.module if sym else "")
            role = "rx" if "rx" in fn else "tx" if "tx" in fn else ""
            # by address and owner: a new owner's device may sit where a closed one's was
            devs = self.vhost_devs.setdefault((int(v.dev), owner), f"{dev_type}{len(self.vhost_devs)}")
            qi = int(v.index)
            out.append(ObjectInfo(obj=obj, vm=vm_name(owner, "" if worker else comm), device=devs, dev_type=dev_type,
                                  queue=qi if qi != 0xFFFF else 0xFFFF,
                                  # net: rx0/tx0 per pair; vsock rx/tx; else (vdpa: any device type) q<index>
                                  name=(f"{role}{qi // 2}" if dev_type == "net" and role else role
                                        or (f"q{qi}" if qi != 0xFFFF else "")),
                                  size=int(v.num), layer=int(Layer.VHOST), pid=owner, features=int(v.features)))
        return out
