"""Device-type rules: which queue is which, and what a used entry must hold.

virtio-net (VIRTIO 1.2 §5.1), virtio-blk (§5.2), virtio-vsock (§5.10).
"""

from __future__ import annotations

from dataclasses import dataclass

from vtrace.model.features import VERSION_1

# §5.1.6 "Device Operation": struct virtio_net_hdr is 12 bytes with
# VERSION_1 (num_buffers always present), 10 for a legacy device without
# MRG_RXBUF.
NET_HDR = 12
NET_HDR_LEGACY = 10
# §5.2.6: struct virtio_blk_req ends in a one-byte status the device writes.
BLK_OUTHDR = 16
BLK_STATUS = 1
# §5.10.6 "Device Operation": struct virtio_vsock_hdr, 44 bytes.
VSOCK_HDR = 44


# Device IDs (VIRTIO 1.2 §5 "Device Types") -> the dev_type names vtrace uses.
DEVICE_IDS = {1: "net", 2: "blk", 3: "console", 4: "rng", 5: "balloon", 8: "scsi", 9: "9p",
              16: "gpu", 18: "input", 19: "vsock", 20: "crypto", 26: "fs", 27: "pmem", 29: "mem"}


@dataclass(frozen=True)
class QueueRole:
    """What a queue is for.

    ``driver_initiated``: the driver posts requests the device must act on
    after a kick (net TX, blk requests, vsock TX, control queues). The other
    kind (net/vsock RX, vsock event) holds buffers the device fills when it has
    something to deliver, so a kick there does not oblige a fetch.
    ``min_used_len``: the least a used entry may report (None: no rule).
    """

    name: str
    driver_initiated: bool
    min_used_len: int | None = None


def role(dev_type: str, queue: int, name: str = "", features: int = 0) -> QueueRole:
    if dev_type == "net":
        # §5.1.2 "Virtqueues": receiveqN = 2N, transmitqN = 2N+1, controlq last.
        if name.startswith("ctrl") or name.startswith("cvq"):
            return QueueRole("ctrl", True)
        if name.startswith("rx") or (not name and queue % 2 == 0):
            # §5.1.6.4 / Linux receive_buf(): a used RX buffer shorter than the
            # header is an error ("rx error: len %u less than header").
            hdr = NET_HDR if (features >> VERSION_1 & 1 or not features) else NET_HDR_LEGACY
            return QueueRole("rx", False, hdr)
        return QueueRole("tx", True)
    if dev_type == "blk":
        # §5.2.6.1: the device MUST write the status byte, so len >= 1.
        return QueueRole("req", True, BLK_STATUS)
    if dev_type == "vsock":
        # §5.10.2: rx = 0, tx = 1, event = 2.
        q = {"rx": 0, "tx": 1, "event": 2}.get(name, queue)
        if q == 0:
            return QueueRole("rx", False, VSOCK_HDR)
        if q == 1:
            return QueueRole("tx", True)
        return QueueRole("event", False)
    if dev_type == "admin-queue":
        return QueueRole("admin", True)
    return QueueRole(name or "queue", True)


def vsock_tx_header_ok(readable: int) -> bool:
    """§5.10.6.2: every TX packet starts with a complete virtio_vsock_hdr.
    vhost-vsock (the seed 002 loop) faults on a chain that does not."""
    return readable >= VSOCK_HDR
