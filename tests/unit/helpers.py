"""Hand-written event streams for tests."""

from vtrace.events import NO_QUEUE, UNOBSERVED, Batch, Kind, Layer, ObjectInfo, make

Q0 = 0xFFFF8880_00001000
Q1 = 0xFFFF8880_00002000
DEV = 0xFFFF8880_00000100
KVM = 0xFFFF8880_00000200

OBJECTS = (
    ObjectInfo(obj=DEV, vm="vm1", device="net0", dev_type="net", layer=Layer.VHOST, pid=10),
    ObjectInfo(obj=Q0, vm="vm1", device="net0", dev_type="net", queue=0, name="rx0", size=8,
               layer=Layer.VHOST, pid=10),
    ObjectInfo(obj=Q1, vm="vm1", device="net0", dev_type="net", queue=1, name="tx0", size=8,
               layer=Layer.VHOST, pid=10),
    ObjectInfo(obj=KVM, vm="vm1", device="kvm", dev_type="kvm", layer=Layer.KVM, pid=10),
)


def ev(kind, ts, obj=Q0, **kw):
    queue = kw.pop("queue", 0 if obj == Q0 else 1 if obj == Q1 else NO_QUEUE)
    return dict(kind=int(kind), ts=ts, obj=obj, queue=queue, layer=int(kw.pop("layer", Layer.VHOST)),
                pid=kw.pop("pid", 10), **kw)


def batch(rows, t_end=None, objects=OBJECTS):
    a = make(rows)
    return Batch(events=a, t_end=t_end if t_end is not None else (int(a["ts"][-1]) if len(a) else 0),
                 objects=objects)


__all__ = ["Q0", "Q1", "DEV", "KVM", "OBJECTS", "ev", "batch", "Kind", "migration", "MIGRATION"]


def migration(a, arcs, t0=1000):
    """Feed MIGRATION_STATE events: (cur, new, next or None, errno) per FSM arc."""
    a.feed(batch([ev(Kind.MIGRATION_STATE, t0 + 10 * i, obj=KVM, layer=Layer.VFIO, aux=cur, id=new,
                     aux2=UNOBSERVED if nxt is None else nxt, len=err)
                  for i, (cur, new, nxt, err) in enumerate(arcs)]))
    return a.snapshot().vms[0]


# A migration out and back in, as the vmlab's device does it (tests/vmlab/vfio_mig.py):
# STOP 1, RUNNING 2, STOP_COPY 3, RESUMING 4, PRE_COPY 6 (not offered: EINVAL 22)
MIGRATION = [(2, 3, 1, 0), (1, 3, 3, 0), (3, 1, 1, 0), (1, 6, None, 22), (1, 4, 4, 0), (4, 2, 1, 0), (1, 2, 2, 0)]


class ScriptedSource:
    """A test's own source: subclasses give ``batches()``; the rest of the Source
    protocol (vtrace/sources/base.py) is what a finite, attach-nothing source does."""
    kind = "test"
    info = {"source": "test"}

    def batches(self):
        raise NotImplementedError

    def probes(self):
        return ()

    def align(self, interval_ns):
        pass  # the batch ends are the test's

    def final(self):
        return []

    def damage(self):
        return None

    def close(self):
        pass
