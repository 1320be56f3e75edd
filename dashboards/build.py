#!/usr/bin/env python3
"""Writes dashboards/grafana/vtrace-overview.json, the Grafana overview dashboard.

The dashboard is code so every panel follows the same rules (checked in
tests/unit/test_dashboards.py): the `datasource` variable on every panel and
target, `$__rate_interval` in every rate/increase, drill-down through the
instance -> vm -> device -> queue variables. Run it after changing a panel:

    python dashboards/build.py
"""

from __future__ import annotations

import json
import os

UID = "vtrace-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
Q = 'instance=~"$instance",vm=~"$vm",device=~"$device",queue=~"$queue"'
BY = "vm, device, queue"
RI = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _panel(pid: int, title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
           x: int = 0, y: int = 0, w: int = 12, h: int = 8, desc: str = "") -> dict:
    p = {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]}}
        if kind == "timeseries" else {},
        "targets": [_target(e, lg, chr(ord("A") + i)) for i, (e, lg) in enumerate(targets)],
    }
    if kind == "table":
        for t in p["targets"]:
            t.update(format="table", instant=True, range=False)
    return p


def _row(pid: int, title: str, y: int) -> dict:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def _var(name: str, query: str, label: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def panels() -> list[dict]:
    out: list[dict] = []
    pid = iter(range(1, 100))
    y = 0

    def row(title):
        nonlocal y
        out.append(_row(next(pid), title, y))
        y += 1

    def pair(a, b):
        nonlocal y
        out.append(_panel(next(pid), *a[:2], **dict(a[2], x=0, y=y)))
        if b:
            out.append(_panel(next(pid), *b[:2], **dict(b[2], x=12, y=y)))
        y += 8

    row("Host: vtrace itself")
    pair(("Events aggregated and lost /s", [
        (f'sum by (instance) (rate(vtrace_events_total{{instance=~"$instance"}}[{RI}]))', "{{instance}} events"),
        (f'sum by (instance) (rate(vtrace_events_lost_total{{instance=~"$instance"}}[{RI}]))', "{{instance}} lost"),
    ], {"unit": "ops", "desc": "Lost > 0 means every other panel under-reports (ring or map full)."}),
        ("Divergences from the VIRTIO spec /s", [
            (f'sum by (rule, severity) (rate(vtrace_divergences_total{{instance=~"$instance"}}[{RI}]))',
             "{{severity}} {{rule}}"),
        ], {"unit": "ops", "desc": "vtrace check --list-rules explains each rule and its spec section."}))
    pair(("Probe points", [
        ('sum by (state) (vtrace_probes{instance=~"$instance"})', "{{state}}"),
    ], {"kind": "stat", "desc": "Failed points: vtrace doctor says why."}),
        ("Source", [('vtrace_source_info{instance=~"$instance"}', "{{instance}} {{kind}} ({{mode}})")],
         {"kind": "table", "desc": "simulated=true: a simulated host, not real hardware."}))

    row("Queues: throughput and batching")
    pair(("Used buffers /s", [
        (f"sum by ({BY}) (rate(vtrace_queue_used_buffers_total{{{Q}}}[{RI}]))", "{{vm}}/{{device}}/{{queue}}"),
    ], {"unit": "ops"}),
        ("Bytes /s (device wrote + device read)", [
            (f"sum by ({BY}) (rate(vtrace_queue_used_bytes_total{{{Q}}}[{RI}]))", "{{vm}}/{{device}}/{{queue}} written"),
            (f"sum by ({BY}) (rate(vtrace_queue_available_bytes_total{{{Q}}}[{RI}]))", "{{vm}}/{{device}}/{{queue}} read"),
        ], {"unit": "Bps"}))
    pair(("Kicks and interrupts per used buffer", [
        (f"sum by ({BY}) (rate(vtrace_queue_kicks_total{{{Q}}}[{RI}])) / "
         f"sum by ({BY}) (rate(vtrace_queue_used_buffers_total{{{Q}}}[{RI}]))", "{{vm}}/{{device}}/{{queue}} kicks"),
        (f"sum by ({BY}) (rate(vtrace_queue_signals_total{{{Q}}}[{RI}])) / "
         f"sum by ({BY}) (rate(vtrace_queue_used_buffers_total{{{Q}}}[{RI}]))", "{{vm}}/{{device}}/{{queue}} irqs"),
    ], {"desc": "Batching: lower is better. EVENT_IDX and notification suppression push these below 1."}),
        ("Suppressed notifications /s", [
            (f"sum by ({BY}) (rate(vtrace_queue_kicks_suppressed_total{{{Q}}}[{RI}]))",
             "{{vm}}/{{device}}/{{queue}} kicks"),
            (f"sum by ({BY}) (rate(vtrace_queue_signals_suppressed_total{{{Q}}}[{RI}]))",
             "{{vm}}/{{device}}/{{queue}} irqs"),
        ], {"unit": "ops"}))

    row("Queues: in flight and latency")
    pair(("Buffers in flight", [
        (f"sum by ({BY}) (vtrace_queue_in_flight_buffers{{{Q}}})", "{{vm}}/{{device}}/{{queue}}"),
    ], {"desc": "Compare with the ring size (vtrace_queue_size_buffers): a full ring stalls the driver."}),
        ("Completion latency p50 / p99", [
            (f"histogram_quantile(0.5, sum by ({BY}, le) "
             f"(rate(vtrace_queue_completion_latency_seconds_bucket{{{Q}}}[{RI}])))", "p50 {{vm}}/{{device}}/{{queue}}"),
            (f"histogram_quantile(0.99, sum by ({BY}, le) "
             f"(rate(vtrace_queue_completion_latency_seconds_bucket{{{Q}}}[{RI}])))", "p99 {{vm}}/{{device}}/{{queue}}"),
        ], {"unit": "s", "desc": "Available -> used. Bucket bounds are powers of 4 ns (1 us .. 17 s)."}))
    pair(("Lifecycle state", [
        (f"vtrace_queue_state{{{Q}}} == 1", "{{vm}}/{{device}}/{{queue}} {{vtrace_queue_state}}"),
    ], {"kind": "table", "desc": "running, suspended, stopped (GET_VRING_BASE), disabled (SET_VRING_ENABLE 0) or reset."}),
        ("In flight at the last suspend", [
            (f"vtrace_queue_in_flight_at_last_suspend_buffers{{{Q}}}", "{{vm}}/{{device}}/{{queue}}"),
        ], {"kind": "table", "desc": "Buffers the device held when it was suspended: what migration must carry."}))
    pair(("Guest ring occupancy at interrupts (descriptors in use)", [
        (f"sum by ({BY}) (vtrace_queue_size_buffers{{{Q}}}) - "
         f"sum by ({BY}) (rate(vtrace_queue_interrupt_free_descriptors_sum{{{Q}}}[{RI}])) / "
         f"sum by ({BY}) (rate(vtrace_queue_interrupt_free_descriptors_count{{{Q}}}[{RI}]))",
         "{{vm}}/{{device}}/{{queue}}"),
    ], {"desc": "Inside a guest: the ring size less the descriptors the driver had free as each interrupt came "
                "(vq->num_free). Near the ring size: the ring was full when the device signalled."}), None)

    row("Virtio admin commands")
    pair(("Admin commands /s", [
        (f'sum by (opcode, status) (rate(vtrace_admin_commands_total{{instance=~"$instance"}}[{RI}]))',
         "{{opcode}} {{status}}"),
    ], {"unit": "ops"}),
        ("Admin command p99 duration", [
            (f'histogram_quantile(0.99, sum by (opcode, le) '
             f'(rate(vtrace_admin_command_duration_seconds_bucket{{instance=~"$instance"}}[{RI}])))', "{{opcode}}"),
        ], {"unit": "s"}))

    row("KVM and DMA per VM")
    V = 'instance=~"$instance",vm=~"$vm"'
    pair(("KVM exits /s by reason", [
        (f"sum by (vm, reason) (rate(vtrace_kvm_exits_total{{{V}}}[{RI}]))", "{{vm}} reason {{reason}}"),
    ], {"unit": "ops"}),
        ("ioeventfd and irqfd /s", [
            (f"sum by (vm) (rate(vtrace_kvm_ioeventfd_signals_total{{{V}}}[{RI}]))", "{{vm}} ioeventfd"),
            (f"sum by (vm) (rate(vtrace_kvm_irqfd_injections_total{{{V}}}[{RI}]))", "{{vm}} irqfd"),
        ], {"unit": "ops"}))
    pair(("DMA map / unmap bytes /s", [
        (f"sum by (vm) (rate(vtrace_dma_map_bytes_total{{{V}}}[{RI}]))", "{{vm}} map"),
        (f"sum by (vm) (rate(vtrace_dma_unmap_bytes_total{{{V}}}[{RI}]))", "{{vm}} unmap"),
    ], {"unit": "Bps"}),
        ("Non-coherent DMA", [(f"vtrace_kvm_noncoherent_dma{{{V}}}", "{{vm}}")],
         {"kind": "table", "desc": "1: the VM registered non-coherent DMA (KVM then honours guest memory types)."}))
    pair(("VFIO migration state", [(f"vtrace_vfio_migration_state{{{V}}} == 1", "{{vm}} {{state}}")],
          {"kind": "table", "desc": "Where each VM's migrating VFIO device is, or is stepping to, in the kernel's "
                                    "migration FSM (RUNNING, STOP, STOP_COPY, RESUMING, ...)."}),
         ("VFIO migration FSM arcs /s", [
             (f"sum by (vm) (rate(vtrace_vfio_migration_arcs_total{{{V}}}[{RI}]))", "{{vm}} arcs"),
             (f"sum by (vm) (rate(vtrace_vfio_migration_refused_total{{{V}}}[{RI}]))", "{{vm}} refused"),
         ], {"unit": "ops", "desc": "Arcs VFIO drivers asked of vfio_mig_get_next_state, and those it refused "
                                    "(a state the device does not offer)."}))
    return out


def dashboard() -> dict:
    return {
        "uid": UID, "title": "vtrace: virtqueues", "tags": ["vtrace", "virtio"], "editable": True,
        "schemaVersion": 39, "version": 1, "time": {"from": "now-30m", "to": "now"}, "refresh": "30s",
        "timezone": "", "graphTooltip": 1,
        "description": "Host -> VM -> device -> queue: pick an instance, then narrow with the variables.",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            _var("instance", "label_values(vtrace_source_info, instance)", "Host"),
            _var("vm", 'label_values(vtrace_queue_used_buffers_total{instance=~"$instance"}, vm)', "VM"),
            _var("device", 'label_values(vtrace_queue_used_buffers_total{instance=~"$instance",vm=~"$vm"}, device)',
                 "Device"),
            _var("queue", 'label_values(vtrace_queue_used_buffers_total{instance=~"$instance",vm=~"$vm",'
                          'device=~"$device"}, queue)', "Queue"),
        ]},
        "annotations": {"list": []},
        "panels": panels(),
    }


PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grafana", "vtrace-overview.json")


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    with open(PATH, "w") as f:
        f.write(render())
    print(PATH)
