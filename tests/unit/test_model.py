"""Table-driven tests of the reference model; each row names the spec rule."""

import pytest

from vtrace import admin as codes
from vtrace.model import Features, PackedRing, RingError, SplitRing, need_event, vring_need_event
from vtrace.model import admin, device, devtypes
from vtrace.model import features as F
from vtrace.model.ring import packed_need_event

EI = Features(1 << F.VERSION_1 | 1 << F.EVENT_IDX)
IO = Features(1 << F.VERSION_1 | 1 << F.EVENT_IDX | 1 << F.IN_ORDER)


@pytest.mark.parametrize("event,new,old,want", [
    # §2.7.10: notify iff event_idx in [old, new) mod 2^16
    (0, 1, 0, True), (5, 6, 5, True), (5, 5, 4, False), (7, 10, 4, True), (3, 10, 4, False),
    (0xFFFF, 1, 0xFFFE, True),  # wrap
    (2, 1, 0xFFFE, False),
])
def test_vring_need_event(event, new, old, want):
    assert vring_need_event(event, new, old) is want
    assert bool(need_event([event], [new], [old])[0]) is want


def test_packed_need_event_wrap():
    # §2.8.10: an event offset in the previous lap is moved back by the ring size.
    assert packed_need_event(3 | 1 << 15, 4, 2, 1, 8)
    assert not packed_need_event(3 | 0 << 15, 4, 2, 1, 8)


def rec():
    out = []
    return out, (lambda kind, **f: out.append((kind.label, f)))


def test_split_ring_roundtrip_and_signal():
    log, r = rec()
    q = SplitRing(8, EI, r)
    h = q.add(100, 0)
    assert q.kick()  # §2.7.10: avail_event 0 lies in [0, 1)
    c = q.fetch()
    assert c.head == h and c.readable == 100
    q.use(h, 0)
    assert q.signal()  # first decision after start always notifies
    assert q.get_buf() == (h, 0)
    q.enable_cb()
    h2 = q.add(100, 0)
    q.fetch()
    q.use(h2, 0)
    assert q.signal()  # used_event == 1 lies in [1, 2)
    h3 = q.add(100, 0)
    q.fetch()
    q.use(h3, 0)
    assert not q.signal()  # driver has not re-armed: used_event still 1
    kinds = [k for k, _ in log]
    assert kinds.count("signal") == 2 and kinds.count("signal_suppressed") == 1


@pytest.mark.parametrize("why,act", [
    ("§2.7.8 used id never made available", lambda q, h: q.use(h + 1, 0)),
    ("§2.7.8.1 len > writable", lambda q, h: q.use(h, 10)),
    ("§2.7.9 batch without IN_ORDER", lambda q, h: q.use(h, 0, batch=2)),
])
def test_split_ring_rejects(why, act):
    q = SplitRing(8, EI)
    h = q.add(100, 4)
    q.fetch()
    with pytest.raises(RingError):
        act(q, h)


def test_in_order_batch_and_violation():
    q = SplitRing(8, IO)
    a, b, c = q.add(1, 8), q.add(1, 8), q.add(1, 8)
    for _ in range(3):
        q.fetch()
    with pytest.raises(RingError):
        q.use(b, 0)  # §2.7.9: b is second in order, entry would cover one
    q.use(b, 4, batch=2)  # one entry for a and b
    assert q.used_idx == 2 and q.in_flight() == [c]
    assert q.get_buf() == (a, 8)  # skipped: counts as fully used
    assert q.get_buf() == (b, 4)


def test_vring_base_restore_rules():
    q = SplitRing(8, EI)
    for _ in range(3):
        q.add(1, 8)
        q.fetch()
    q.use(0, 1)
    base = q.get_base()
    assert base == 3
    with pytest.raises(RingError):
        q.set_base(7)
    q.set_base(base - 2)  # rewind to the used index: the two in flight are handed back
    assert q.in_flight() == []


def test_split_size_power_of_two():
    with pytest.raises(RingError):
        SplitRing(12, EI)
    PackedRing(12, EI)  # §2.8: packed rings need not be a power of 2


def test_packed_ring_roundtrip_out_of_order_and_wrap():
    log, r = rec()
    q = PackedRing(4, EI, r)
    ids = [q.add(10, 20, descs=1) for _ in range(3)]
    for _ in range(3):
        assert q.fetch() is not None
    assert q.fetch() is None
    q.use(ids[2], 5)  # §2.8: used descriptors in completion order
    q.use(ids[0], 6)
    assert q.get_buf() == (ids[2], 5)
    assert q.get_buf() == (ids[0], 6)
    q.use(ids[1], 7)
    assert q.get_buf() == (ids[1], 7)
    # the next adds wrap the ring: avail/used flags follow the wrap counters (§2.8.1)
    for _ in range(3):
        i = q.add(1, 1)
        assert q.fetch().head == i
        q.use(i, 1)
        assert q.get_buf() == (i, 1)
    assert q.dev_avail_wrap == 0 and q.avail_wrap == 0


def test_packed_chain_and_event_flags():
    q = PackedRing(8, EI)
    i = q.add(10, 20, descs=3)
    c = q.fetch()
    assert c.head == i and c.descs == 3 and q.dev_avail == 3
    q.disable_cb()
    q.use(i, 20)
    assert not q.signal()  # §2.8.10 DISABLE
    q.driver_event = {"flags": 0, "off_wrap": 0}
    j = q.add(1, 1)
    q.fetch()
    q.use(j, 1)
    assert q.signal()  # ENABLE


@pytest.mark.parametrize("writes,err", [
    ([device.ACKNOWLEDGE | device.DRIVER, ], None),
    ([device.DRIVER], "DRIVER before ACKNOWLEDGE"),
    ([1, 3, 3 | device.DRIVER_OK], "DRIVER_OK before FEATURES_OK"),
    ([1, 3, 11, 15, 15 | device.STATUS_SUSPEND], "SUSPEND set but VIRTIO_F_SUSPEND"),
    ([1, 3, 11, 1], "cleared"),
    ([1, 3 | device.DEVICE_NEEDS_RESET], "set by the device"),
])
def test_status_lifecycle(writes, err):
    d = device.DeviceStatus(offered=1 << F.VERSION_1 | 1 << F.EVENT_IDX)
    try:
        for v in writes:
            d.write(v, features=1 << F.VERSION_1)
    except device.StatusError as e:
        assert err and err in str(e)
    else:
        assert err is None


def test_status_suspend_and_reset():
    d = device.DeviceStatus(offered=1 << F.VERSION_1 | 1 << F.SUSPEND)
    for v in (1, 3, 11, 15):
        d.write(v, features=1 << F.VERSION_1 | 1 << F.SUSPEND)
    assert d.running
    d.write(15 | device.STATUS_SUSPEND)
    assert not d.running
    d.write(15)  # SUSPEND may be cleared (1.4 Device Suspension)
    assert d.running
    d.device_error()
    assert not d.running
    d.write(0)  # §2.1.2: reset
    assert d.status == 0


def test_features_negotiation():
    with pytest.raises(F.FeatureError):
        Features.negotiate(1 << F.VERSION_1, 1 << F.VERSION_1 | 1 << F.IN_ORDER)  # not offered
    with pytest.raises(F.FeatureError):
        Features.negotiate(1 << F.RING_PACKED, 1 << F.RING_PACKED)  # needs VERSION_1
    f = Features.negotiate(IO.bits, IO.bits)
    assert f.in_order and f.event_idx and "IN_ORDER" in f.names()


@pytest.mark.parametrize("op,group,member,want", [
    (0x0002, codes.GROUP_SRIOV, 1, (codes.STATUS_OK, codes.Q_OK)),  # seed 000: legacy write from a VF
    (0x0002, codes.GROUP_SELF, 0, (codes.STATUS_EINVAL, codes.Q_INVALID_GROUP)),  # legacy: SR-IOV only
    (0x0003, codes.GROUP_SRIOV, 0, (codes.STATUS_EINVAL, codes.Q_INVALID_MEMBER)),
    (0x0003, codes.GROUP_SRIOV, 9, (codes.STATUS_EINVAL, codes.Q_INVALID_MEMBER)),  # > NumVFs
    (0x0008, codes.GROUP_SELF, 1, (codes.STATUS_EINVAL, codes.Q_INVALID_MEMBER)),
    (0x0042, codes.GROUP_SRIOV, 1, (codes.STATUS_EINVAL, codes.Q_INVALID_OPCODE)),  # reserved
    (0x0000, 7, 0, (codes.STATUS_EINVAL, codes.Q_INVALID_GROUP)),
])
def test_admin_device(op, group, member, want):
    r = admin.AdminDevice(num_vfs=8).execute(op, group, member)
    assert (r.status, r.qualifier) == want


def test_admin_dev_mode_set():
    d = admin.AdminDevice(num_vfs=2)
    assert d.execute(0x0011, codes.GROUP_SRIOV, 2, admin.F_STOPPED).ok
    assert d.stopped == {2}
    assert not d.execute(0x0011, codes.GROUP_SRIOV, 2, 0x80).ok  # reserved flag bits
    assert d.execute(0x0011, codes.GROUP_SRIOV, 2, 0).ok and not d.stopped


@pytest.mark.parametrize("dev,q,name,role,minlen,driver", [
    ("net", 0, "rx0", "rx", 12, False), ("net", 1, "tx0", "tx", None, True),
    ("net", 4, "ctrl", "ctrl", None, True), ("blk", 0, "req.0", "req", 1, True),
    ("vsock", 0, "rx", "rx", 44, False), ("vsock", 1, "tx", "tx", None, True),
    ("vsock", 2, "event", "event", None, False),
])
def test_queue_roles(dev, q, name, role, minlen, driver):
    r = devtypes.role(dev, q, name, 1 << F.VERSION_1)
    assert (r.name, r.min_used_len, r.driver_initiated) == (role, minlen, driver)
