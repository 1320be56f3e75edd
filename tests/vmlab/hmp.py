#!/usr/bin/env python3
"""HMP commands on a QEMU monitor socket (``-monitor unix:PATH,server=on``),
one after another, each once QEMU has answered the one before.

    hmp.py PATH COMMAND...    prints each command's answer

`migrate` without -d holds the monitor until the migration ends, so the next
command runs after it; `quit` closes the socket (its answer is empty).
"""

from __future__ import annotations

import socket
import sys

PROMPT = b"(qemu) "


def _until_prompt(mon: socket.socket) -> bytes:
    seen = b""
    while PROMPT not in seen:
        chunk = mon.recv(4096)
        if not chunk:  # QEMU closed the monitor (quit)
            break
        seen += chunk
    return seen


def monitor(path: str, *commands: str) -> list[str]:
    """Each command's answer (its echo and the prompt stripped)."""
    answers = []
    with socket.socket(socket.AF_UNIX) as mon:
        mon.connect(path)
        _until_prompt(mon)  # the banner
        for command in commands:
            mon.sendall(command.encode() + b"\n")
            text = _until_prompt(mon).replace(PROMPT, b"").decode(errors="replace")
            answers.append("\n".join(ln for ln in text.replace("\r", "").splitlines()
                                     if ln.strip() and ln.strip() != command))
    return answers


if __name__ == "__main__":
    for cmd, answer in zip(sys.argv[2:], monitor(sys.argv[1], *sys.argv[2:])):
        print(f"(qemu) {cmd}\n{answer}")
