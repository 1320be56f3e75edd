"""Virtio admin command vocabulary (VIRTIO 1.3/1.4 "Administration Commands").

Names are the spec's, without the VIRTIO_ADMIN_CMD_ prefix. A reserved
opcode is labelled ``unknown:0xNNNN`` and counted, never dropped.
"""

from __future__ import annotations

# admin.tex, table "Administration command opcodes"
OPCODES: dict[int, str] = {
    0x0000: "LIST_QUERY",
    0x0001: "LIST_USE",
    0x0002: "LEGACY_COMMON_CFG_WRITE",
    0x0003: "LEGACY_COMMON_CFG_READ",
    0x0004: "LEGACY_DEV_CFG_WRITE",
    0x0005: "LEGACY_DEV_CFG_READ",
    0x0006: "LEGACY_NOTIFY_INFO",
    0x0007: "CAP_ID_LIST_QUERY",
    0x0008: "DEVICE_CAP_GET",
    0x0009: "DRIVER_CAP_SET",
    0x000A: "RESOURCE_OBJ_CREATE",
    0x000B: "RESOURCE_OBJ_QUERY",
    0x000C: "RESOURCE_OBJ_MODIFY",
    0x000D: "RESOURCE_OBJ_DESTROY",
    0x000E: "DEV_PARTS_METADATA_GET",
    0x000F: "DEV_PARTS_GET",
    0x0010: "DEV_PARTS_SET",
    0x0011: "DEV_MODE_SET",
}

# admin.tex: status values are Linux errno numbers.
STATUS_OK = 0
STATUS_ENXIO = 6
STATUS_EAGAIN = 11
STATUS_ENOMEM = 12
STATUS_EBUSY = 16
STATUS_EINVAL = 22
STATUS_ENOSPC = 28
STATUSES: dict[int, str] = {
    STATUS_OK: "OK", STATUS_ENXIO: "ENXIO", STATUS_EAGAIN: "EAGAIN", STATUS_ENOMEM: "ENOMEM",
    STATUS_EBUSY: "EBUSY", STATUS_EINVAL: "EINVAL", STATUS_ENOSPC: "ENOSPC",
}

Q_OK = 0x00
Q_INVALID_COMMAND = 0x01
Q_INVALID_OPCODE = 0x02
Q_INVALID_FIELD = 0x03
Q_INVALID_GROUP = 0x04
Q_INVALID_MEMBER = 0x05
Q_NORESOURCE = 0x06
Q_TRYAGAIN = 0x07
QUALIFIERS: dict[int, str] = {
    Q_OK: "OK", Q_INVALID_COMMAND: "INVALID_COMMAND", Q_INVALID_OPCODE: "INVALID_OPCODE",
    Q_INVALID_FIELD: "INVALID_FIELD", Q_INVALID_GROUP: "INVALID_GROUP",
    Q_INVALID_MEMBER: "INVALID_MEMBER", Q_NORESOURCE: "NORESOURCE", Q_TRYAGAIN: "TRYAGAIN",
}

GROUP_SELF = 0x0
GROUP_SRIOV = 0x1
GROUPS = {GROUP_SELF: "self", GROUP_SRIOV: "sriov"}


def opcode_name(op: int) -> str:
    return OPCODES.get(op, f"unknown:{op:#06x}")


def status_name(st: int) -> str:
    return STATUSES.get(st, f"unknown:{st}")


def qualifier_name(q: int) -> str:
    return QUALIFIERS.get(q, f"unknown:{q:#04x}")
