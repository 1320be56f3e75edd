"""The rule catalogue: every rule the checker knows, with its title, the spec
section it enforces, its severity and an explanation; looked up by id."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}  # lower is worse


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    section: str
    severity: str
    explanation: str


RULES: tuple[Rule, ...] = (
    Rule("used-unknown-id", "used id never made available", "VIRTIO 1.2 §2.7.8 The Virtqueue Used Ring",
         "error", "The device wrote a used entry for a head the driver never made available (or one out "
         "of the ring's range). The driver will free a descriptor it does not own."),
    Rule("used-twice", "buffer used twice", "VIRTIO 1.2 §2.7.8 The Virtqueue Used Ring", "error",
         "A head was returned in the used ring again without being made available in between: the "
         "driver completes the same request twice or frees a descriptor in use."),
    Rule("in-order-violation", "out-of-order use while IN_ORDER was negotiated",
         "VIRTIO 1.2 §2.7.9 / §2.8.12 In-order use of descriptors", "error",
         "With VIRTIO_F_IN_ORDER the device must use buffers in the order they were made available "
         "(one entry may stand for a batch, advancing the used index by the batch size)."),
    Rule("used-len-exceeds-writable", "used.len larger than the chain's device-writable length",
         "VIRTIO 1.2 §2.7.8.1 Device Requirements: The Virtqueue Used Ring", "error",
         "len is the number of bytes the device wrote into the device-writable part of the chain; "
         "it cannot exceed that part (TX chains have none: len must be 0)."),
    Rule("used-len-short", "used.len shorter than the device type requires",
         "VIRTIO 1.2 §5.1.6.4 (net RX header), §5.2.6.1 (blk status), §5.10.6 (vsock header)", "error",
         "A virtio-net RX buffer shorter than the virtio_net_hdr (a zero-length RX completion) is an "
         "error to the driver; a blk request must return its status byte; vsock RX starts with a "
         "44-byte header. QEMU/vDPA developers rejected zero-length RX completion at suspend."),
    Rule("vsock-tx-short-header", "vsock TX chain shorter than its header",
         "VIRTIO 1.2 §5.10.6.2 Device Operation: Buffer Space Management", "warning",
         "Every TX packet starts with a 44-byte virtio_vsock_hdr. vhost-vsock's TX loop faults on such "
         "a chain (\"Expecting pkt->hdr\"), and the seed-002 version then leaks the head."),
    Rule("inflight-at-stop", "buffers in flight when the queue stopped or suspended",
         "VIRTIO 1.4 draft Device Suspension; vhost GET_VRING_BASE", "warning",
         "A device without IN_ORDER may hold buffers when the ring stops; unless the VMM migrates "
         "them (virtio-blk does; seed 004 for virtio-net) they are lost at migration. The list of "
         "heads and their ages is in the evidence."),
    Rule("inflight-lost-after-resume", "buffers in flight at stop never completed after resume",
         "VIRTIO 1.4 draft Device Suspension; vhost SET_VRING_BASE", "error",
         "Buffers the device held when the ring stopped were neither completed after it restarted "
         "nor handed back by rewinding the ring: the guest waits for them forever."),
    Rule("vring-base-mismatch", "restored vring base differs from the one saved at stop",
         "vhost VHOST_SET_VRING_BASE / VHOST_GET_VRING_BASE", "error",
         "The index restored at start must be the last_avail_idx saved at stop, or the used index "
         "(rewind so in-flight buffers are fetched again). Anything else skips or replays buffers. "
         "A VMM started with -incoming (a restore, a migration's destination) continues the queue of the "
         "same VM, device and name that another process stopped last: checked across the two."),
    Rule("signal-missing", "a used-buffer notification the driver asked for was suppressed",
         "VIRTIO 1.2 §2.7.7.2 / §2.7.10 (vring_need_event)", "error",
         "With EVENT_IDX the device must notify when used_event lies in the range of entries it just "
         "added (without it, unless NO_INTERRUPT is set). Suppressing it is the lost-interrupt hang."),
    Rule("signal-spurious", "a notification suppression said was not needed",
         "VIRTIO 1.2 §2.7.7.2 / §2.7.10", "info",
         "The device notified although the driver's used_event (or NO_INTERRUPT flag) said it should "
         "not: correct but costs an interrupt (performance)."),
    Rule("kick-stall", "a kick the device never acted on",
         "VIRTIO 1.2 §2.7.13 Supplying Buffers to The Device; vhost handle_kick", "error",
         "After a driver notification with new buffers, a driver-initiated queue's device must fetch "
         "them; none was fetched within the stall threshold while the queue was running."),
    Rule("inflight-too-long", "a buffer in flight longer than the threshold",
         "VIRTIO 1.2 §2.7.13 / §2.7.14 (progress)", "warning",
         "A running queue held a buffer longer than --max-in-flight: a slow backend, a leaked head "
         "(an error path that never calls add_used) or a device that stopped processing."),
    Rule("admin-error-status", "admin command completed with an error status",
         "VIRTIO 1.3 draft §2.12.1 Group administration commands", "warning",
         "The device rejected the command; the status qualifier says why."),
    Rule("admin-unsupported-opcode", "reserved or unsupported admin opcode reached the device",
         "VIRTIO 1.3 draft §2.12.1; Linux vp_modern_admin_cmd_exec", "warning",
         "Opcodes outside 0x0000-0x0011 are reserved. Linux rejects commands not in supported_cmds with "
         "-EOPNOTSUPP before they reach the device, so one that does bypassed that check."),
    Rule("admin-bad-member-accepted", "admin command with an invalid group or member accepted",
         "VIRTIO 1.3 draft §2.12.1 Group administration commands", "error",
         "SELF uses member id 0, SR-IOV members are 1..NumVFs, legacy access commands exist only for "
         "SR-IOV members: the device must answer EINVAL (INVALID_GROUP/INVALID_MEMBER), not OK."),
    Rule("admin-timeout", "admin command never completed", "VIRTIO 1.3 draft §2.12 Administration Virtqueues",
         "error", "A command was submitted and no completion came within the stall threshold."),
    Rule("devmode-stopped-inflight", "seen buffers not written back after DEV_MODE_SET stopped",
         "VIRTIO 1.4 draft Device parts: DEV_MODE_SET (F_STOPPED)", "error",
         "When a member device enters stopped mode it must have written back every buffer it has seen; "
         "buffers of its queues were still in flight when the command completed."),
)
RULE_BY_ID = {rule.id: rule for rule in RULES}
