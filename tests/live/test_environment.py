"""The live tier's foundations on this machine: bcc, bpftool, BTF, BPF itself."""

import ctypes
import json
import subprocess

import pytest

pytestmark = pytest.mark.live


def test_bcc_imports_in_the_venv_and_loads_libbcc():
    import bcc  # exposed through the venv's vtrace-bcc.pth, not all of dist-packages
    assert bcc.__file__.startswith("/usr/lib/python3/dist-packages/bcc") or "bcc-shim" in bcc.__file__
    from bcc import libbcc
    assert isinstance(libbcc.lib, ctypes.CDLL)


def test_pip_is_the_venvs_not_debians():
    import pip
    assert "/usr/lib/python3/dist-packages" not in pip.__file__


def test_bpftool_reads_vmlinux_btf():
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
                         capture_output=True, text=True, check=True, timeout=120)
    types = json.loads(out.stdout)["types"]
    vq = [t for t in types if t.get("kind") == "STRUCT" and t.get("name") == "virtqueue"]
    assert vq and {m["name"] for m in vq[0]["members"]} >= {"name", "index", "num_free"}


def test_kernel_accepts_a_bpf_program():
    """A socket filter through bcc's own loader: proves bpf(2) works for us."""
    from bcc import libbcc
    # BPF_MOV64_IMM(r0, 0); BPF_EXIT
    insns = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
    buf = ctypes.create_string_buffer(insns, len(insns))
    log = ctypes.create_string_buffer(4096)
    fd = libbcc.lib.bcc_prog_load(1, b"vtrace_probe", ctypes.cast(buf, ctypes.c_void_p), len(insns),
                                  b"GPL", 0, 0, log, 4096)
    assert fd >= 0, log.value.decode(errors="replace")
    import os
    os.close(fd)
