"""`vtrace export --source live` inside this guest, scraped by a real
Prometheus: the dashboard panels built on metrics only a guest's own driver
gives (tests/system/test_export_prometheus.py GUEST_ONLY_METRICS; the
simulated host has none) return data, and what they say is plausible."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from tests.system.exporter import exporter, get, need, prometheus, query, wait_for
from tests.system.test_export_prometheus import _dashboard_exprs, guest_only

pytestmark = pytest.mark.live
IO_FILE = "/var/tmp/vtrace-live-export.bin"


def _disk_queue() -> str:
    """The root disk's request queue as the exporter labels it: virtio1 / req.0."""
    return os.path.basename(os.path.realpath("/sys/block/vda/device"))


def test_guest_only_dashboard_panels_have_data_from_a_live_exporter(tmp_path):
    need("prometheus")
    exprs = [(t, e) for t, e in _dashboard_exprs() if guest_only(e)]
    assert exprs
    stop = threading.Event()

    def io():  # O_DIRECT reads on the root disk: its queue interrupts while Prometheus scrapes
        subprocess.run(["dd", "if=/dev/zero", f"of={IO_FILE}", "bs=4k", "count=2000", "oflag=direct"],
                       check=True, capture_output=True)
        while not stop.is_set():
            subprocess.run(["dd", f"if={IO_FILE}", "of=/dev/null", "bs=4k", "count=2000", "iflag=direct"],
                           check=True, capture_output=True)

    worker = threading.Thread(target=io, daemon=True)
    try:
        with exporter(source="live") as url:
            worker.start()
            scrape = {"static_configs": [{"targets": [url.split("://", 1)[1]]}]}
            with prometheus(str(tmp_path), scrape) as prom:
                wait_for(lambda: query(prom, 'count_over_time(up{job="vtrace"}[1m]) >= 8'), 60, "8 scrapes")
                status, body = get(url + "/metrics")
                assert status == 200
                disk = _disk_queue()
                for title, e in exprs:
                    got = wait_for(lambda: query(prom, e), 30, f"data for {title!r}")
                    mine = [r for r in got if r["metric"].get("device") == disk and r["metric"]["queue"] == "req.0"]
                    assert mine, (title, got, [x for x in body.decode().splitlines() if "free_desc" in x][:8])
                    size = float(query(prom, f'vtrace_queue_size_buffers{{device="{disk}",queue="req.0"}}')[0]
                                 ["value"][1])
                    # dd reads one 4 KiB block at a time: a few descriptors in use, never the ring
                    for r in mine:
                        assert 0 < float(r["value"][1]) < size / 2, (title, r, size)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(30)
        if os.path.exists(IO_FILE):
            os.unlink(IO_FILE)
