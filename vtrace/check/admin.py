"""Admin-queue rules: each command's submission paired with its completion —
admin-unsupported-opcode, admin-error-status, admin-bad-member-accepted,
admin-timeout — and the DEV_MODE_SET completions the lifecycle rules fan out
to the member's queues."""

from __future__ import annotations

import numpy as np

from vtrace import admin as admin_codes
from vtrace.check.columns import Columns
from vtrace.check.evidence import Evidence, Findings
from vtrace.events import Kind, ObjectInfo
from vtrace.model import admin as admin_model

DEV_MODE_SET = 0x0011


class AdminCommands:
    """Submitted commands waiting for their completion, keyed by (queue, submit ts, opcode)."""

    def __init__(self) -> None:
        self.submits: dict[tuple[int, int, int], tuple] = {}

    def forget(self) -> None:
        self.submits.clear()

    def check(self, find: Findings, cols: Columns, positions: np.ndarray,
              infos: dict[int, ObjectInfo]) -> list[tuple[int, int, int]]:
        """Admin rules; returns (position, member, flags) of DEV_MODE_SET completions."""
        out = []
        for pos in positions.tolist():
            kind, obj, ts, op = int(cols["kind"][pos]), int(cols["obj"][pos]), int(cols["ts"][pos]), \
                int(cols["id"][pos])
            if kind == Kind.ADMIN_SUBMIT:
                self.submits[(obj, ts, op)] = (ts, cols.base + pos, op, int(cols["aux"][pos]),
                                               int(cols["aux2"][pos]), int(cols["len"][pos]))
                continue
            status, qual, lat = int(cols["len"][pos]), int(cols["aux2"][pos]), int(cols["arg"][pos])
            sub = self.submits.pop((obj, ts - lat, op), None)
            find.checked("admin-timeout")
            where = f"admin {infos[obj].device}" if obj in infos else "admin"
            names = f"status {admin_codes.status_name(status)}, qualifier {admin_codes.qualifier_name(qual)}"
            evidence = [cols.evidence(pos, ("id", "len", "aux", "aux2"))]
            if sub is not None:
                evidence.insert(0, Evidence(sub[1], sub[0], "admin_submit",
                                            (("opcode", op), ("group_type", sub[3]), ("member_id", sub[4]))))
            find.checked("admin-unsupported-opcode")
            if not admin_model.opcode_defined(op):
                find.found("admin-unsupported-opcode", ts, where,
                           f"{admin_codes.opcode_name(op)} reached the device ({names})", evidence)
                continue
            find.checked("admin-error-status")
            if status != admin_codes.STATUS_OK:
                find.found("admin-error-status", ts, where,
                           f"{admin_codes.opcode_name(op)}"
                           f"{f' member {sub[4]}' if sub else ''}: {names}", evidence)
            if sub is None:
                find.unchecked("admin-bad-member-accepted", 1, "the command's submission was not observed")
                if op == DEV_MODE_SET:
                    find.unchecked("devmode-stopped-inflight", 1, "DEV_MODE_SET submission not observed")
                continue
            member, data = sub[4], sub[5]
            find.checked("admin-bad-member-accepted")
            bad = admin_model.member_problem(op, sub[3], member)
            if bad is not None and status == admin_codes.STATUS_OK:
                find.found("admin-bad-member-accepted", ts, where,
                           f"{admin_codes.opcode_name(op)} group {admin_codes.GROUPS.get(sub[3], sub[3])} "
                           f"member {member} accepted; expected qualifier "
                           f"{admin_codes.qualifier_name(bad.qualifier)}", evidence)
            if op == DEV_MODE_SET and status == admin_codes.STATUS_OK and sub[3] == admin_codes.GROUP_SRIOV:
                out.append((pos, member, data))
        return out

    def overdue(self, find: Findings, now: int, stall_ns: int) -> None:
        """admin-timeout: submissions with no completion within the stall threshold."""
        if self.submits:
            for key, (sub_ts, sub_ord, op, _group, member, _data) in list(self.submits.items()):
                if now - sub_ts > stall_ns:
                    del self.submits[key]
                    find.found("admin-timeout", sub_ts, "admin",
                               f"{admin_codes.opcode_name(op)} for member {member} not completed in "
                               f"{(now - sub_ts) / 1e6:.0f} ms", (Evidence(sub_ord, sub_ts, "admin_submit"),))
