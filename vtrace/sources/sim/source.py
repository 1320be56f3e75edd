"""SimSource: the simulated host as a Source (vtrace.sources.base) — batches
of ticks in time order, optionally paced to the wall clock."""

from __future__ import annotations

import os
import time
from dataclasses import fields
from typing import Iterator

import numpy as np

from vtrace.events import Batch, ProbeStatus
from vtrace.sources.base import Source
from vtrace.sources.sim.config import NS, T0, TICK_NS, SimConfig
from vtrace.sources.sim.host import SimHost


class SimSource(Source):
    """A Source over SimHost. ``realtime`` paces batches to the wall clock."""

    kind = "sim"

    def __init__(self, cfg: SimConfig | None = None, *, realtime: bool = False,
                 batch_ns: int = 100_000_000, duration_ns: int | None = None):
        self.cfg = cfg or SimConfig()
        self.realtime = realtime
        self.batch_ns = max(TICK_NS, batch_ns - batch_ns % TICK_NS)
        self.duration_ns = duration_ns
        self.host = SimHost(self.cfg)

    @property
    def info(self) -> dict:
        return {
            "source": "sim",
            "host": "simulated-host",
            "kernel": "simulated",
            "simulated": True,
            "kvm_isa": "vmx",  # the scenario's kvm_exit codes are VMX basic exit reasons
            "sim_config": {fld.name: getattr(self.cfg, fld.name) for fld in fields(self.cfg)},
            "ts_start": T0,
            "pid": os.getpid(),
        }

    def probes(self) -> tuple[ProbeStatus, ...]:
        return (ProbeStatus("sim", "simulated host", "sim", True),)

    def batches(self) -> Iterator[Batch]:
        host = self.host
        batch_t = T0
        end = None if self.duration_ns is None else T0 + self.duration_ns
        wall0 = time.monotonic()
        first = True
        while end is None or batch_t < end:
            t1 = batch_t + self.batch_ns if end is None else min(batch_t + self.batch_ns, end)
            parts = []
            tick_t = batch_t
            while tick_t < t1:
                parts.append(host.tick(tick_t, min(tick_t + TICK_NS, t1)))
                tick_t += TICK_NS
            events = np.concatenate(parts) if len(parts) > 1 else parts[0]
            if self.realtime:
                delay = wall0 + (t1 - T0) / NS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield Batch(events=events, t_end=t1, objects=tuple(host.objects) if first else (),
                        probes=self.probes() if first else None)
            first = False
            batch_t = t1

    def align(self, interval_ns: int) -> None:
        """Nothing to do: every count is in the events, whatever the batch boundaries."""

    def final(self) -> list[Batch]:
        return []

    def damage(self) -> str | None:
        return None

    def close(self) -> None:
        pass
