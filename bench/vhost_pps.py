#!/usr/bin/env python3
"""vhost-net TX packets/s with and without vtrace, inside the vmlab guest.

Debian's stock kernel under QEMU (TCG), the host-root lab guest of
tests/vmlab/lab.py: tests/vmlab/vmm.py --blast keeps a vhost-net TX ring
full of 60-byte frames for S seconds. Interleaved rounds: nothing tracing,
`vtrace stat --source live` (counting in the kernel: the always-on mode)
and `vtrace capture --source live` (every event to a file). Under emulation
absolute packet rates mean little; the ratio to the untraced rounds of the
same boot is the figure.

    python bench/vhost_pps.py [--rounds 5] [--seconds 3] [--out bench/results]

Needs what the vmlab needs (qemu-system-x86, busybox-static, apt-get for the
kernel package); no root inside this machine beyond that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import RESULTS, ROOT, save

sys.path.insert(0, ROOT)
from tests.vmlab import lab  # noqa: E402

PY = sys.executable
MODES = {
    "none": "",
    "stat": f"{PY} -m vtrace.cli stat --source live 1",
    "capture": f"{PY} -m vtrace.cli capture --source live -f -o /tmp/bench.vtrace",
}


def guest_script(rounds: int, seconds: float) -> str:
    """sh: per round and mode, the tracer (if any) started and ready, then the blast."""
    lines = ["run() {",
             "  if [ -n \"$2\" ]; then $2 >/out/$1.$3.err 2>&1 & t=$!;",
             "    i=0; while ! grep -q 'Hit Ctrl-C' /out/$1.$3.err && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done;",
             "    grep -q 'Hit Ctrl-C' /out/$1.$3.err || { echo VTRACE-BENCH-FAIL $1 $3 not tracing; return; }",
             "  fi",
             f"  {PY} tests/vmlab/vmm.py /out/$1.$3.json --blast {seconds} || echo VTRACE-BENCH-FAIL $1 $3",
             "  if [ -n \"$2\" ]; then kill -TERM $t; wait $t; fi",
             "  rm -f /tmp/bench.vtrace",
             "}"]
    for r in range(rounds):
        for mode, cmd in MODES.items():
            lines.append(f"run {mode} '{cmd}' {r}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    k = lab.stock_kernel()
    with tempfile.TemporaryDirectory(prefix="vtrace-bench-") as d:
        d = Path(d)
        # a traced round waits for vtrace to start: about 20 s under TCG, more on a busy host
        try:
            _out, run = lab.run_host_root(d, ["vhost_net", "tun"], guest_script(a.rounds, a.seconds), kernel=k,
                                          timeout=int(300 + a.rounds * len(MODES) * (a.seconds + 60)))
        except lab.LabError as e:
            done = sorted(f.name for f in (d / "out").glob("*.json"))
            raise SystemExit(f"vhost_pps: {e} (rounds finished: {', '.join(done) or 'none'})") from None
        bad = [ln for ln in run.console.splitlines() if "VTRACE-BENCH-FAIL" in ln]
        if bad:
            errs = {f.name: f.read_text()[-300:] for f in (d / "out").glob("*.err") if f.stat().st_size}
            raise SystemExit(f"vhost_pps: {bad[0].split('VTRACE-BENCH-FAIL', 1)[1].strip()} failed; {errs}")
        missing = [f"{m}.{r}" for m in MODES for r in range(a.rounds) if not (d / "out" / f"{m}.{r}.json").exists()]
        if missing:
            raise SystemExit(f"vhost_pps: no result for {', '.join(missing)}; console tail: "
                             f"{' | '.join(run.console.strip().splitlines()[-5:])}")
        pps = {m: [json.loads((d / "out" / f"{m}.{r}.json").read_text())["pps"] for r in range(a.rounds)]
               for m in MODES}
    med = {m: statistics.median(v) for m, v in pps.items()}
    result = {
        "kernel": k.release, "accel": "tcg", "rounds": a.rounds, "seconds": a.seconds, "frame_bytes": 60,
        "pps": {m: [round(x) for x in v] for m, v in pps.items()},
        "median_pps": {m: round(v) for m, v in med.items()},
        "ratio_to_none": {m: round(med[m] / med["none"], 4) for m in MODES if m != "none"},
    }
    path = save(a.out, "vhost_pps.json", result)
    print(f"vhost-net TX under TCG ({k.release}), {a.rounds} interleaved rounds of {a.seconds:g} s:")
    for m in MODES:
        ratio = "" if m == "none" else f"   {result['ratio_to_none'][m]:.3f} of untraced"
        print(f"  {m:<8} median {med[m]:>10,.0f} pps  (rounds: {', '.join(f'{x:,.0f}' for x in pps[m])}){ratio}")
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
