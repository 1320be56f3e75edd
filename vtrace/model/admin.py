"""The administration virtqueue (VIRTIO 1.3 draft §2.12 "Administration
Virtqueues"; device parts and DEV_MODE_SET from the 1.4 draft,
admin-cmds-device-parts.tex).

``AdminDevice`` answers commands the way a conformant owner device must:
status and status qualifier per the rules of "Group administration commands",
LIST_QUERY/LIST_USE for the group types it supports, legacy access only for
SR-IOV group members, DEV_MODE_SET tracking the members' modes.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtrace import admin as codes

OPCODE_MAX = 0x0011  # the last opcode the 1.4 draft defines
LEGACY_OPCODES = frozenset(range(0x0002, 0x0007))
F_STOPPED = 1  # DEV_MODE_SET flags bit 0


def opcode_defined(op: int) -> bool:
    """Opcodes 0x0000-0x0011 are defined; every other is reserved."""
    return 0 <= op <= OPCODE_MAX


@dataclass(frozen=True)
class AdminResult:
    status: int
    qualifier: int

    @property
    def ok(self) -> bool:
        return self.status == codes.STATUS_OK


OK = AdminResult(codes.STATUS_OK, codes.Q_OK)


def member_problem(op: int, group: int, member: int, num_vfs: int | None = None) -> AdminResult | None:
    """The status a device MUST return for a bad group or member, or None.

    "Group administration commands": the group type must be one the device
    supports (INVALID_GROUP); the member id must name a member (SELF: 0;
    SR-IOV: 1..NumVFs) (INVALID_MEMBER); the legacy interface commands are
    defined for SR-IOV group members only."""
    if group not in (codes.GROUP_SELF, codes.GROUP_SRIOV):
        return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_GROUP)
    if op in LEGACY_OPCODES and group != codes.GROUP_SRIOV:
        return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_GROUP)
    if group == codes.GROUP_SELF and member != 0:
        return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_MEMBER)
    if group == codes.GROUP_SRIOV and (member < 1 or (num_vfs is not None and member > num_vfs)):
        return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_MEMBER)
    return None


class AdminDevice:
    """An owner device (a PF) with an admin queue."""

    def __init__(self, num_vfs: int = 8, supported: frozenset[int] | None = None):
        self.num_vfs = num_vfs
        self.supported = supported if supported is not None else frozenset(range(OPCODE_MAX + 1))
        self.in_use: set[int] = set()  # group types the driver selected with LIST_USE
        self.stopped: set[int] = set()  # members in DEV_MODE_SET stopped mode

    def execute(self, op: int, group: int, member: int, data: int = 0) -> AdminResult:
        if not opcode_defined(op) or op not in self.supported:
            # Reserved or unsupported opcode: EINVAL / INVALID_OPCODE.
            return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_OPCODE)
        bad = member_problem(op, group, member, self.num_vfs)
        if bad is not None:
            return bad
        if op == 0x0001:  # LIST_USE: the driver picks group types it will use
            self.in_use.add(group)
        elif op == 0x0011:  # DEV_MODE_SET
            if data & ~F_STOPPED:
                return AdminResult(codes.STATUS_EINVAL, codes.Q_INVALID_FIELD)
            (self.stopped.add if data & F_STOPPED else self.stopped.discard)(member)
        return OK
