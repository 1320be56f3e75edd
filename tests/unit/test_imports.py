"""Headless modules import neither textual nor bcc (nor each other's sources)."""

import subprocess
import sys

HEADLESS = ["vtrace.events", "vtrace.aggregate", "vtrace.capture", "vtrace.jsonl", "vtrace.perfetto",
            "vtrace.report", "vtrace.pipeline", "vtrace.cli", "vtrace.sources", "vtrace.sources.sim",
            "vtrace.sources.replay", "vtrace.sources.qemulog", "vtrace.sources.live", "vtrace.fmt",
            "vtrace.admin", "vtrace.doctor", "vtrace.kernel.btf", "vtrace.kernel.headers",
            "vtrace.kernel.symbols", "vtrace.kernel.attach", "vtrace.check", "vtrace.model", "vtrace.export",
            "vtrace.export.metrics", "vtrace.export.web", "vtrace.export.text", "vtrace.queuetable",
            "vtrace.tui", "vtrace.tui.feed", "vtrace.tui.view", "vtrace.kernel.transport", "vtrace.kernel.fentry",
            "vtrace.sources.perfbuf", "vtrace.sources.ringbuf", "vtrace.stop"]
OUTPUTS = ["vtrace.report", "vtrace.perfetto", "vtrace.jsonl", "vtrace.export", "vtrace.tui.app"]


def _modules_after(mods):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_headless_modules_do_not_import_textual_or_bcc():
    loaded = _modules_after(HEADLESS)
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}
    assert "bcc" not in loaded


def test_outputs_do_not_import_sources():
    loaded = _modules_after(OUTPUTS)
    assert not {m for m in loaded if m.startswith("vtrace.sources")}
