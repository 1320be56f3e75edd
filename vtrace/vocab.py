"""The words every output uses: queue states and their short names, the
label of a source, a divergence count. `vtrace stat`/`report`
(vtrace/report.py), `vtrace top` (vtrace/tui/) and the exporter
(vtrace/export/) all take them from here, so a word means one thing
everywhere. The figures themselves (bytes/s, whether a queue is active) are
defined once in vtrace/queuetable.py.

Headless and dependency-free: nothing here imports numpy, textual or
prometheus_client.
"""

from __future__ import annotations

from enum import Enum


class QueueState(str, Enum):
    """A queue's lifecycle state, as the aggregator sets it. A ``str`` Enum:
    each member equals the plain string the aggregator stores
    (``QueueState.RUNNING == "running"``). The order is the exporter's
    (vtrace_queue_state's label values, in exposition order)."""

    RUNNING = "running"  # the default; back to it on resume, SET_VRING_BASE, ring enabled
    SUSPENDED = "suspended"  # vhost-vdpa suspend
    STOPPED = "stopped"  # GET_VRING_BASE without a suspend before it
    DISABLED = "disabled"  # vhost-vdpa set_vq_ready(0)
    RESET = "reset"  # device or queue reset
    RELEASED = "released"  # the device let go (its fd closed: the VMM exited); forgotten after the eviction window

    def __str__(self) -> str:
        return self.value

    @property
    def short(self) -> str:
        return STATE_SHORT[self.value]


# The values, in order: what the exporter's state set lists.
QUEUE_STATES: tuple[str, ...] = tuple(s.value for s in QueueState)

# At most 4 characters: the STATE column of `vtrace stat` and `vtrace top`.
STATE_SHORT: dict[str, str] = {"running": "run", "suspended": "susp", "stopped": "stop", "disabled": "dis",
                               "reset": "rst", "released": "rel"}
assert set(STATE_SHORT) == set(QUEUE_STATES)


def state_short(state: str) -> str:
    """The short name of a state; a state this vtrace does not know, cut to 4."""
    return STATE_SHORT.get(state, str(state)[:4])


def source_label(s) -> str:
    """Where a Snapshot's events come from, in words: ``sim (simulated host)``,
    ``live``, ``replay of live: FILE``."""
    src = s.source
    name = src.get("source", "?")
    if name == "replay":
        inner = src.get("recorded_source", "?")
        label = f"replay of {inner}" + (" (simulated host)" if src.get("simulated") else "")
        return f"{label}: {src.get('file', '')}"
    return "sim (simulated host)" if src.get("simulated") else name


def divergence_counts(s) -> list[tuple[str, str, int]]:
    """A Snapshot's divergences as (rule, severity, count), in the checker's order."""
    return [(d.rule, d.severity, d.count) for d in s.divergences]
