"""bcc's own output, kept off the terminal and turned into one line.

bcc and libbpf write from C to fd 2: compiler warnings, and on a rejected
load the whole verifier log (57 MB for one vhost program on 6.1, tests/vmlab),
while the Python exception says only "Bad address" or "Permission denied".
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

_INSN = re.compile(r"^\d+: \(|^;|^processed \d+ insns|^verification time|^stack depth|^from \d+ to \d+|^\s*$")


@contextlib.contextmanager
def captured_stderr():
    """Collect what C code writes to fd 2 while the block runs; yields a list that gets the text."""
    out: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def reason(log: str, exc: BaseException) -> str:
    """One line for a failed compile or load: the compiler's error, else the
    verifier's last verdict, else the exception's first line."""
    lines = log.splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    if errors:
        return "compile error: " + errors[0].split(": error: ", 1)[1].strip()
    verdict = [ln.strip() for ln in lines if not _INSN.match(ln) and not ln.startswith(("bpf: ", "warning: "))]
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "processed " in log and verdict:
        return f"verifier: {verdict[-1]}"
    return text
