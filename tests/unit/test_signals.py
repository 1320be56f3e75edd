"""Ctrl-C and SIGTERM end a capture cleanly: index written, exit 0, nothing lost."""

import signal
import subprocess
import sys
import time

import pytest

from vtrace.capture import CaptureReader


def _child_signals(blocked: bool):
    def setup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A CI runner once started us with SIGINT blocked; the mask survives
        # exec, so vtrace itself must unblock it (Pipeline.run does).
        how = signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK
        signal.pthread_sigmask(how, {signal.SIGINT, signal.SIGTERM})
    return setup


@pytest.mark.parametrize("blocked", [False, True], ids=["", "blocked"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_capture_finishes_cleanly_on_signal(tmp_path, sig, blocked):
    out = tmp_path / "s.vtrace"
    p = subprocess.Popen([sys.executable, "-m", "vtrace.cli", "capture", "--source", "sim", "-o", str(out)],
                         stderr=subprocess.PIPE, text=True, preexec_fn=_child_signals(blocked))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 100_000):
        time.sleep(0.1)
    p.send_signal(sig)
    try:
        err = p.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"{sig.name} did not end the capture within 30 s: {p.communicate()[1]!r}")
    assert p.returncode == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}") and "(interrupted)" in last
    r = CaptureReader(str(out))
    n = sum(b.events.size for b in r.batches())
    assert r.stats.complete and not r.stats.damage
    assert f"{n:,} events" in last  # every event counted is in the file
