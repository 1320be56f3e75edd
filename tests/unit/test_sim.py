import numpy as np
import pytest

from vtrace.events import Kind
from vtrace.sources.base import Source
from vtrace.sources.sim import NS, T0, SimConfig, SimSource


def _all(cfg="", seconds=3.0):
    src = SimSource(SimConfig.parse(cfg), duration_ns=int(seconds * NS))
    bs = list(src.batches())
    return src, bs, np.concatenate([b.events for b in bs])


def test_deterministic_for_a_seed():
    _, _, a = _all("seed=5", 2)
    _, _, b = _all("seed=5", 2)
    _, _, c = _all("seed=6", 2)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_time_ordered_and_within_batches():
    _, bs, ev = _all("", 3)
    ts = ev["ts"].astype(np.int64)
    assert (np.diff(ts) >= 0).all()
    prev = 0
    for b in bs:
        if b.events.size:
            assert b.events["ts"][0] >= prev and b.events["ts"][-1] <= b.t_end
        prev = b.t_end


def test_every_event_has_a_known_object():
    src, bs, ev = _all("", 2)
    objs = {o.obj for o in bs[0].objects}
    assert set(np.unique(ev["obj"]).tolist()) <= objs


def test_buffers_are_conserved_per_queue():
    """fetched = used + still in flight, per queue, when nothing was reset."""
    src, bs, ev = _all("lifecycle=0", 3)
    infl = src.host.in_flight()
    for q in src.host.queues:
        m = ev["obj"] == q.info.obj
        fetched = int((ev["kind"][m] == Kind.FETCH).sum())
        used = int((ev["kind"][m] == Kind.USED).sum())
        assert fetched == used + infl[q.info.obj], q.info.name


def test_heads_unique_among_in_flight():
    _, _, ev = _all("workload=blk,vms=1,scale=20", 2)  # out-of-order device, busy ring
    inflight = set()
    for k, h in zip(ev["kind"].tolist(), ev["id"].tolist()):
        if k == Kind.FETCH:
            assert h not in inflight
            inflight.add(h)
        elif k == Kind.USED:
            assert h in inflight
            inflight.remove(h)


def test_lifecycle_and_admin_appear():
    _, _, ev = _all("suspend_every=1,suspend_for=0.2", 3)
    kinds = set(np.unique(ev["kind"]).tolist())
    for k in (Kind.SUSPEND, Kind.RESUME, Kind.VRING_BASE_GET, Kind.VRING_BASE_SET, Kind.ADMIN_SUBMIT,
              Kind.ADMIN_COMPLETE, Kind.KVM_IOEVENTFD, Kind.KVM_IRQFD, Kind.DMA_MAP,
              Kind.NONCOHERENT_DMA_REGISTER, Kind.KICK_SUPPRESSED, Kind.SIGNAL_SUPPRESSED, Kind.VFIO_IOCTL,
              Kind.VFIO_REGION_RW, Kind.VFIO_MMAP):
        assert int(k) in kinds, k


def test_suspended_queue_is_quiet_and_base_restored():
    _, _, ev = _all("suspend_every=1,suspend_for=0.3,vms=1", 2)
    get = ev[ev["kind"] == Kind.VRING_BASE_GET]
    put = ev[ev["kind"] == Kind.VRING_BASE_SET]
    assert get.size and get.size == put.size
    for g in get:
        p = put[(put["obj"] == g["obj"])][0]
        assert p["id"] == g["id"]
        between = ev[(ev["obj"] == g["obj"]) & (ev["ts"] > g["ts"]) & (ev["ts"] < p["ts"])]
        assert not np.isin(between["kind"], [Kind.FETCH, Kind.USED]).any()


def test_scale_reaches_millions_per_simulated_second():
    _, _, ev = _all("workload=net,vms=4,scale=8", 0.5)
    assert ev.size / 0.5 > 1_000_000


@pytest.mark.parametrize("bad", ["nope=1", "vms=0", "ring=100", "workload=gpu", "scale=-1", "kvm=maybe",
                                 "seed=x"])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        SimConfig.parse(bad)


def test_implements_the_source_protocol():
    src = SimSource(SimConfig.parse("vms=1"), duration_ns=NS // 2)
    assert isinstance(src, Source) and src.kind == "sim" and src.info["simulated"]
    src.align(NS)  # a no-op: batches are cut where they were
    assert [b.t_end for b in src.batches()] == [T0 + (i + 1) * NS // 10 for i in range(5)]
    assert src.final() == [] and src.damage() is None
    src.close()
    src.close()  # safe twice
