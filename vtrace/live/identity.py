"""Object identity: which VM, device and queue each kernel object the probes name is.

Objects are kernel pointers (a vhost_virtqueue, a virtqueue, a blk-mq
hardware context) or per-process tags (KVM_TAG, IOMMU_TAG, VFIO_TAG: a
three-letter tag and the VMM's tgid). Each is described once, from the
programs' identity maps (vq_info, hq_info, mig_info), read only when a batch
names an object not seen before, in a layer that has such a map. A vhost
queue whose memory a new owner took over gets a new id (``new_lives``).

vhost devices are numbered per VM and device type (net0, vsock0) in the
order the VMM opened them: its SET_OWNER's time (dev_info), or for a device
owned before vtrace attached the time its first queue was seen (those come
first). A vhost-net device's backend is the tap its SET_BACKEND fd serves
(the VMM's /proc/PID/fdinfo/FD, ``iff:``), a vhost-vsock device's its guest
CID; vhost-net devices of one VM on the same tap are one NIC (QEMU opens
/dev/vhost-net once per queue pair: queues rx0/tx0, rx1/tx1 in open order).
A backend learnt after the queues were described (SET_BACKEND runs after the
rings are set up) describes them again: dev_gen says when dev_info changed.

``Identity`` works on columns (numpy arrays of obj, layer, pid, kind), so it
is tested without a kernel: the identity maps come from ``loaded``, a
callable returning (program name, bcc BPF object) pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from vtrace.events import Kind, Layer, ObjectInfo
from vtrace.model.devtypes import DEVICE_IDS

KVM_TAG = 0x4B564D0000000000    # "KVM" + tgid (probes/kvm.bpf.c)
IOMMU_TAG = 0x494F4D0000000000  # "IOM" + tgid (probes/iommu.bpf.c)
VFIO_TAG = 0x5646490000000000   # "VFI" + tgid (probes/vfio.bpf.c)
TAG_MASK = 0xFFFFFF0000000000
_TAGGED = {KVM_TAG: ("kvm", Layer.KVM), IOMMU_TAG: ("iommu", Layer.IOMMU), VFIO_TAG: ("vfio", Layer.VFIO)}


def vmm_args(pid: int, proc: str = "/proc") -> list[str] | None:
    """The VMM's command line; None if it is gone, [] if exiting (its memory
    already gone) or a kernel thread."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return [a.decode(errors="replace") for a in argv if a]


def receives_migration(pid: int, proc: str = "/proc") -> bool:
    """Whether the VMM was started to receive a migration: QEMU's -incoming
    (a restore from a file, the destination of a live migration; libvirt's
    restore and migration use it too)."""
    return any(a in ("-incoming", "--incoming") for a in vmm_args(pid, proc) or ())


def vm_name(pid: int, comm: str = "", proc: str = "/proc") -> str:
    """The VM's name from the VMM's command line (QEMU: -name guest=web1,... or -name web1).
    A VMM gone before vtrace read its identity (a short run between two reads) is
    ``<comm>-<pid>`` when the probe recorded its comm, else ``pid<N>``; one still
    exiting reads an empty command line and is named by its comm the same way."""
    args = vmm_args(pid, proc)
    if args is None:
        return f"{comm}-{pid}" if comm else f"pid{pid}"
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


def tap_of(pid: int, fd: int, proc: str = "/proc") -> str:
    """The tap (tun) interface file descriptor ``fd`` of ``pid`` serves, from its
    fdinfo (drivers/net/tun.c tun_chr_show_fdinfo: ``iff:\t<ifname>``); empty
    for any other fd, one not attached to an interface, or one gone."""
    try:
        with open(f"{proc}/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("iff:"):
                    return line[4:].strip()
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def taps_of(pid: int, proc: str = "/proc") -> list[str]:
    """The tap interface of each tun fd ``pid`` holds, in fd order (a multiqueue
    tap: one fd per queue, each naming the same interface)."""
    try:
        fds = sorted(int(n) for n in os.listdir(f"{proc}/{pid}/fdinfo") if n.isdigit())
    except OSError:
        return []
    return [t for t in (tap_of(pid, fd, proc) for fd in fds) if t]


def _forget(bpf, table: bytes, key: int) -> None:
    """Delete one row of a program's hash map; none there (or no such map) is fine."""
    try:
        t = bpf[table]
        del t[t.Key(key)]
    except (KeyError, TypeError):
        pass


@dataclass
class _VhostQueue:
    """A vhost queue as vq_info described it: kept to describe it again."""
    vm: str
    dev_type: str
    role: str        # rx/tx from the kick handler's name, else ""
    index: int       # in its vhost_dev (0xFFFF: not found)
    num: int
    features: int
    owner: int
    guest_cid: int   # its device's struct vhost_vsock guest_cid when first seen (vsock only)
    incoming: bool   # its owner was started to receive a migration (receives_migration)
    dev: int         # its struct vhost_dev (dev_info's key)


@dataclass
class _VhostDev:
    """One vhost_dev of one owner."""
    dev_type: str
    first_ns: int                                   # its first queue first seen
    queues: list[int] = field(default_factory=list)  # ids, in the order described
    owned_ns: int = 0       # its SET_OWNER (0: owned before vtrace attached)
    backend: str = ""       # the last known: tap name, cid:N
    named_by: tuple = ()    # (pid, fd) whose fdinfo gave ``backend``; ("fds",): the fd table

    def order(self) -> tuple[int, int]:
        """Where it comes in its VM's open order: devices owned before vtrace
        attached (by when first seen) before those whose SET_OWNER it saw."""
        return (1, self.owned_ns) if self.owned_ns else (0, self.first_ns)


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
                 loaded: Callable[[], Iterable[tuple[str, object]]] = lambda: (), proc: str = "/proc"):
        self.host = host
        self.syms = syms
        self.loaded = loaded
        self.proc = proc
        self.known: set[int] = set()
        # vhost queues whose address a new owner took over (a closed device's
        # memory handed out again): kernel pointer -> the id its events carry
        # now, and the owner each pointer's identity was read for (new_lives)
        self.lives: dict[int, int] = {}
        self.owner_of: dict[int, int] = {}
        # vhost: each queue as first read, each device by (address, owner), the
        # devices of each owner, what each queue was last described as, the
        # dev_info rows last read and dev_gen's count then, and the fd-table
        # reads of owners whose devices vtrace did not see set up
        self.vhost_queues: dict[int, _VhostQueue] = {}
        self.vhost_devs: dict[tuple[int, int], _VhostDev] = {}
        self.owner_devs: dict[int, list[tuple[int, int]]] = {}
        self.described: dict[int, ObjectInfo] = {}
        self.dev_rows: dict[int, tuple[int, int, int, int, int]] = {}
        self.dev_gen: int | None = None
        self.fd_tables: dict[int, tuple[frozenset, str]] = {}

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

    def let_go(self, obj: np.ndarray, layer: np.ndarray, kind: np.ndarray) -> None:
        """Delete the kernel's identity rows of the vhost queues these rows
        release (RELEASE: the device's fd closed, or RESET_OWNER), once
        ``objects`` has described them: vq_info holds 4096 queues and dev_info
        4096 devices, and a host whose VMs come and go would fill them, leaving
        later queues nameless. A device's dev_info row goes only with an owner
        exiting or gone: after RESET_OWNER the owner may take the device again,
        and its row holds the device's place in the VM's open order."""
        released = obj[(kind == Kind.RELEASE) & (layer == Layer.VHOST)]
        if not released.size:
            return
        bpf = next((b for name, b in self.loaded() if name == "vhost"), None)
        if bpf is None:
            return
        ptr_of = {now: ptr for ptr, now in self.lives.items()}
        for o in set(released.tolist()):
            _forget(bpf, b"vq_info", ptr_of.get(o, o))
            queue = self.vhost_queues.get(o)
            if queue is not None and not vmm_args(queue.owner, self.proc):
                _forget(bpf, b"dev_info", queue.dev)

    # descriptions -----------------------------------------------------------------
    def objects(self, obj: np.ndarray, layer: np.ndarray, pid: np.ndarray, kind: np.ndarray) -> list[ObjectInfo]:
        """Identities of objects these rows name for the first time (each object's
        layer, pid and kind taken from its first row), and of vhost queues named
        before whose description changed (a backend learnt, queue pairs joined).
        The identity maps are read from the kernel only when such an object
        appears in their layer, or (vhost) when dev_gen says dev_info changed."""
        layers: set[int] = set()
        if obj.size:
            objs, first = np.unique(obj, return_index=True)
            fresh = np.array([o not in self.known for o in objs.tolist()], dtype=bool)
            layers = set(layer[first[fresh]].tolist())
        new = []
        for name, bpf in self.loaded():
            # vhost: also when a device's owner or backend changed (dev_gen), so a
            # backend set after its queues were described is still shown
            if name == "vhost" and (self._vhost_changed(bpf) or Layer.VHOST in layers):
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

    def _vhost_changed(self, bpf) -> bool:
        """Whether dev_info changed since it was last looked at (a SET_OWNER,
        SET_BACKEND or SET_GUEST_CID ran) while vtrace has vhost queues to name."""
        try:
            t = bpf[b"dev_gen"]
            gen = int(t[t.Key(0)].value)
        except (KeyError, IndexError, TypeError, AttributeError):
            return False  # a program without it
        if gen == self.dev_gen:
            return False
        self.dev_gen = gen
        return bool(self.vhost_queues)

    def _vhost_objects(self, bpf) -> list[ObjectInfo]:
        """vhost queues: the VM from the worker's name (vhost-<owner pid>), the
        driver and queue role from the kick handler's symbol; the device's
        number, queue pair and backend from all of its VM's devices (described
        again whenever those change)."""
        owners = set()
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
            first_ns = int(getattr(v, "first_ns", 0))
            self.vhost_queues[obj] = _VhostQueue(
                vm=vm_name(owner, "" if worker else comm, self.proc), dev_type=dev_type, role=role,
                index=int(v.index), num=int(v.num), features=int(v.features), owner=owner,
                guest_cid=int(getattr(v, "guest_cid", 0)), incoming=receives_migration(owner, self.proc),
                dev=int(v.dev))
            # by address and owner: a new owner's device may sit where a closed one's was
            key = (int(v.dev), owner)
            d = self.vhost_devs.get(key)
            if d is None:
                d = self.vhost_devs[key] = _VhostDev(dev_type, first_ns)
                self.owner_devs.setdefault(owner, []).append(key)
            d.first_ns = min(d.first_ns, first_ns)
            d.queues.append(obj)
            owners.add(owner)
        rows = self._dev_info(bpf)
        for dev, row in rows.items():  # SET_OWNER, SET_BACKEND, SET_GUEST_CID since the last read
            if self.dev_rows.get(dev) != row and (dev, row[4]) in self.vhost_devs:
                owners.add(row[4])
        self.dev_rows = rows
        out = []
        for owner in sorted(owners):
            out.extend(self._describe_owner(owner, rows))
        return out

    def _dev_info(self, bpf) -> dict[int, tuple[int, int, int, int, int]]:
        """dev_info: device -> (owned_ns, backend_fd, fd_tgid, guest_cid, owner), the
        owner as its queues name it: the vhost worker's vhost-<pid> is the thread
        that took the device (the VMM's main thread: its tgid, in practice)."""
        try:
            items = bpf[b"dev_info"].items()
        except KeyError:
            return {}
        out = {}
        for k, v in items:
            dev, tgid, pid = int(k.value), int(v.tgid), int(getattr(v, "pid", 0))
            owner = pid if pid and (dev, pid) in self.vhost_devs else tgid
            out[dev] = (int(v.owned_ns), int(v.backend_fd), int(v.fd_tgid), int(v.guest_cid), owner)
        return out

    def _describe_owner(self, owner: int, rows: dict) -> list[ObjectInfo]:
        """Name every vhost queue of one VMM again; the identities that changed."""
        keys = self.owner_devs[owner]
        devs = [self.vhost_devs[k] for k in keys]
        for (dev, _owner), d in zip(keys, devs):
            row = rows.get(dev)
            if row is None or row[4] != owner:  # none, or another owner's (this one's was not seen)
                row = (0, -1, 0, 0, owner)
            owned_ns, fd, fd_pid, cid, _owner = row
            d.owned_ns = owned_ns
            if d.dev_type == "net" and fd >= 0 and d.named_by != (fd_pid, fd):
                tap = tap_of(fd_pid, fd, self.proc)
                if tap:  # else (the fd closed already) the last known stays
                    d.backend, d.named_by = tap, (fd_pid, fd)
            elif d.dev_type == "vsock":
                cid = cid or max((self.vhost_queues[q].guest_cid for q in d.queues), default=0)
                if cid:
                    d.backend = f"cid:{cid}"
        self._taps_from_fd_table(owner, keys, devs)
        # one unit per NIC (vhost-net devices on one tap) or other device, numbered per type in open order
        units: dict[tuple, list[_VhostDev]] = {}
        for (dev, _owner), d in zip(keys, devs):
            key = (d.dev_type, "tap", d.backend) if d.dev_type == "net" and d.backend else (d.dev_type, "dev", dev)
            units.setdefault(key, []).append(d)
        by_type: dict[str, list[list[_VhostDev]]] = {}
        for key, members in units.items():
            members.sort(key=_VhostDev.order)
            by_type.setdefault(key[0], []).append(members)
        out = []
        for dev_type, found in by_type.items():
            found.sort(key=lambda m: m[0].order())
            for n, members in enumerate(found):
                for pair, d in enumerate(members):
                    for obj in d.queues:
                        info = self._queue_info(obj, f"{dev_type}{n}", pair, d.backend)
                        if self.described.get(obj) != info:
                            self.described[obj] = info
                            out.append(info)
        return out

    def _taps_from_fd_table(self, owner: int, keys: list[tuple[int, int]], devs: list[_VhostDev]) -> None:
        """vhost-net devices set up before vtrace attached (no SET_OWNER or
        SET_BACKEND seen): their tap from the VMM's fd table, when that is
        unambiguous: every tun fd not already a seen backend names one
        interface, with at least one fd per such device. Otherwise none."""
        todo = [(k, d) for k, d in zip(keys, devs)
                if d.dev_type == "net" and not d.owned_ns and d.named_by in ((), ("fds",))]
        if not todo:
            return
        key = frozenset(k for k, _d in todo)
        seen = self.fd_tables.get(owner)
        if seen is None or seen[0] != key:
            known = {d.backend for d in devs if d.named_by and d.named_by != ("fds",)}
            taps = [t for t in taps_of(owner, self.proc) if t not in known]
            seen = self.fd_tables[owner] = (key, taps[0] if len(set(taps)) == 1 and len(taps) >= len(todo) else "")
        if seen[1]:
            for _k, d in todo:
                d.backend, d.named_by = seen[1], ("fds",)

    def _queue_info(self, obj: int, device: str, pair: int, backend: str) -> ObjectInfo:
        q = self.vhost_queues[obj]
        qi = q.index
        if q.dev_type == "net" and qi != 0xFFFF:
            qi += 2 * pair  # the NIC's queue pair: virtio-net's receiveqN = 2N, transmitqN = 2N+1
        return ObjectInfo(obj=obj, vm=q.vm, device=device, dev_type=q.dev_type, queue=qi,
                          # net: rx0/tx0 per pair; vsock rx/tx; else (vdpa: any device type) q<index>
                          name=(f"{q.role}{qi // 2}" if q.dev_type == "net" and q.role else q.role
                                or (f"q{qi}" if qi != 0xFFFF else "")),
                          size=q.num, layer=int(Layer.VHOST), pid=q.owner, features=q.features, backend=backend,
                          incoming=q.incoming)
