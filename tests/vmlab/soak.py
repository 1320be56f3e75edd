"""Boot the lab again and again with every probe point attached while its own
virtio devices are busy: a hung or crashed guest is vtrace hurting the machine
it traces (`make lab-soak`, BOOTS=N, in parallel JOBS at a time).

Each boot (Debian's 6.1, the host-root guest: its root is 9p over virtio)
loads every module a point probes (vhost_net, vhost_vsock, vfio-pci, kvm),
keeps its 9p root and a virtio-blk disk busy (files read in a loop, O_DIRECT
reads in a loop), and runs `vtrace capture` with the default strategies
(fentry/fexit where the kernel takes them, tp_btf, tracepoints; kprobes where
fentry is refused): every point this kernel has. Every attach and detach
patches the text those loops run through. The lab's tests run the kprobe
strategy on the same devices. Prints one line per boot and a summary; exits 1
if any boot failed.

    python -m tests.vmlab.soak [BOOTS] [JOBS]
"""

from __future__ import annotations

import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

from tests.vmlab import lab

MODULES = ["virtio_blk", "vhost_net", "vhost_vsock", "vfio_pci", "kvm_amd"]
SECONDS = 5  # the capture traces this long

ROUND = """
round() {{
  export VTRACE_STRATEGIES=$2
  {py} -m vtrace.cli capture --source live -d {s}s -o /tmp/$1.vtrace 2>/out/$1.capture.err
  echo VTRACE-SOAK-$1 $?
  cp /tmp/$1.vtrace /out/
}}
"""


def script(py: str) -> str:
    # busy, with a breath between bursts so that vtrace's own compile still gets the CPU
    load = ("( while :; do find /usr/lib/python3 -name '*.py' 2>/dev/null | head -100 | xargs cat >/dev/null; "
            "sleep 0.1; done ) & "
            "( while :; do dd if=/dev/vda of=/dev/null bs=4096 count=64 iflag=direct 2>/dev/null; sleep 0.05; done ) &\n")
    return load + ROUND.format(py=py, s=SECONDS) + "round default ''\n"


def one_boot(i: int, root: Path) -> tuple[int, bool, float, str]:
    d = root / f"boot{i:02d}"
    d.mkdir(parents=True)
    disk = d / "disk.img"
    disk.write_bytes(b"\x5a" * (4 << 20))
    t0 = time.monotonic()
    try:
        out, run = lab.run_host_root(d, MODULES, script(sys.executable),
                                     ["-drive", f"file={disk},if=none,id=vd0,format=raw",
                                      "-device", "virtio-blk-pci,drive=vd0,num-queues=1"], timeout=600)
    except lab.LabError as e:
        return i, False, time.monotonic() - t0, str(e)[:1500]
    said = {r: run.marker(f"VTRACE-SOAK-{r}") for r in ("default",)}
    points = {}
    for r in said:
        try:
            points[r] = sum(p["attached"] for p in lab.probe_table(out, r).values())
        except (OSError, AssertionError, ValueError) as e:
            points[r] = 0
            said[r] = f"{said[r]} (no capture: {e})"
    ok = all(v == "0" for v in said.values()) and all(points.values())
    return i, ok, time.monotonic() - t0, f"exit codes {said}, points attached {points}"


def main() -> int:
    boots = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    root = Path(tempfile.mkdtemp(prefix="vtrace-soak-"))
    print(f"{boots} boots, {jobs} at a time, in {root} (QEMU -accel {lab.TCG})", flush=True)
    t0 = time.monotonic()
    results = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for i, ok, secs, what in pool.map(lambda i: one_boot(i, root), range(boots)):
            results.append(ok)
            print(f"boot {i:2d} {'ok  ' if ok else 'FAIL'} {secs:6.1f} s  {what}", flush=True)
    print(f"{sum(results)} of {boots} boots ok, {boots - sum(results)} failed, in {time.monotonic() - t0:.0f} s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
