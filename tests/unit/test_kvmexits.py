"""KVM exit reasons named from the kernel's tables (vtrace/kvmexits.py), by the
traced host's KVM vendor: the tables, the vendor a host reports, and the names
reaching the report, `stat -j` and the exporter through the Snapshot, a capture
header keeping the vendor for a replay."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vtrace import report
from vtrace.capture import CaptureWriter, header_for
from vtrace.events import Kind, Layer
from vtrace.export.text import renderer
from vtrace.kvmexits import (KVM_EXIT_REASONS, SVM_EXIT_REASONS, VMX_EXIT_REASONS, exit_name, host_isa,
                             userspace_exit_name)
from vtrace.pipeline import Pipeline
from vtrace.sources.replay import ReplaySource
from vtrace.sources.sim import SimConfig, SimSource
from tests.unit.helpers import KVM, ScriptedSource, batch, ev

# kvm_exit codes measured on an AMD host, and what kvm_stat calls them
AMD = {123: "IOIO", 96: "INTR", 114: "CPUID", 124: "MSR", 1024: "NPF"}


def test_svm_codes_are_named_as_kvm_stat_names_them():
    assert {c: exit_name("svm", c) for c in AMD} == AMD
    assert exit_name("svm", 0x4E) == "EXCP_PF"  # SVM_EXIT_EXCP_BASE + PF_VECTOR
    assert exit_name("svm", 0x403) == "VMGEXIT" and exit_name("svm", 0x80000010) == "VMGEXIT_PSC"
    assert exit_name("svm", -1) == exit_name("svm", 0xFFFFFFFF) == "ERR"  # SVM_EXIT_ERR as the u32 traced


def test_vmx_codes_are_named_by_basic_reason_with_flags_kept():
    assert exit_name("vmx", 1) == "EXTERNAL_INTERRUPT"
    assert exit_name("vmx", 12) == "HLT" and exit_name("vmx", 30) == "IO_INSTRUCTION"
    assert exit_name("vmx", 48) == "EPT_VIOLATION" and exit_name("vmx", 49) == "EPT_MISCONFIG"
    # bit 31: the VM entry failed; the basic reason is in the low 16 bits
    assert exit_name("vmx", 0x80000000 | 33) == "INVALID_STATE|FAILED_VMENTRY"
    assert exit_name("vmx", 0x08000000 | 12) == "HLT|SGX_ENCLAVE_MODE"
    assert exit_name("vmx", 0x00010000 | 12) == "HLT|0x10000"  # a flag bit no header names stays visible


def test_a_code_no_table_has_is_its_number():
    assert exit_name("vmx", 5) == "5" and exit_name("vmx", 0x80000005) == str(0x80000005)
    assert exit_name("svm", 0x001) == "1" and exit_name("svm", 0x500) == "1280"
    for isa in (None, "pvm", "arm64"):  # an old capture, a PVM host: nothing says which table
        assert exit_name(isa, 123) == "123"
    assert userspace_exit_name(2) == "IO" and userspace_exit_name(6) == "MMIO"
    assert userspace_exit_name(29) == "X86_RDMSR" and userspace_exit_name(999) == "999"


def test_tables_are_one_name_per_code():
    for table in (VMX_EXIT_REASONS, SVM_EXIT_REASONS, KVM_EXIT_REASONS):
        names = list(table.values())
        assert len(set(names)) == len(names) and all(n == n.upper() for n in names)
        assert all(n and " " not in n and "|" not in n for n in names)
    assert len(VMX_EXIT_REASONS) >= 60 and len(SVM_EXIT_REASONS) >= 100 and len(KVM_EXIT_REASONS) >= 40


def _host(tmp_path, modules=(), cpuinfo=None):
    (tmp_path / "sys" / "module").mkdir(parents=True)
    for m in modules:
        (tmp_path / "sys" / "module" / m).mkdir()
    (tmp_path / "proc").mkdir()
    if cpuinfo is not None:
        (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    return host_isa(str(tmp_path / "sys"), str(tmp_path / "proc"))


@pytest.mark.parametrize("modules, cpuinfo, isa", [
    (("kvm", "kvm_amd"), "vendor_id\t: GenuineIntel\n", "svm"),  # the loaded module decides
    (("kvm", "kvm_intel"), None, "vmx"),
    (("kvm", "kvm_pvm"), "vendor_id\t: AuthenticAMD\nflags\t\t: fpu hypervisor\n", "pvm"),
    (("kvm",), "vendor_id\t: AuthenticAMD\nflags\t\t: fpu svm lm\n", "svm"),
    (("kvm",), "vendor_id\t: GenuineIntel\nflags\t\t: fpu vmx lm\n", "vmx"),
    ((), "processor\t: 0\nvendor_id\t: HygonGenuine\nflags\t\t: fpu hypervisor\n", "svm"),
    ((), "vendor_id\t: GenuineIntel\n", "vmx"),
    ((), "vendor_id\t: SomethingElse\n", None),
    ((), None, None),
])
def test_host_isa_from_the_kvm_module_else_the_cpu(tmp_path, modules, cpuinfo, isa):
    assert _host(tmp_path, modules, cpuinfo) == isa


def _sim():
    return SimSource(SimConfig.parse("seed=5,vms=2"), duration_ns=600_000_000)


def test_sim_says_vmx_and_every_output_names_its_exits():
    snap = Pipeline(_sim()).run()
    assert snap.source["kvm_isa"] == "vmx"
    sim_names = {"EXTERNAL_INTERRUPT", "HLT", "IO_INSTRUCTION", "MSR_WRITE", "EPT_VIOLATION", "EPT_MISCONFIG"}
    for v in snap.vms:
        assert v.exits_by_reason and {r for r, _ in v.exits_by_reason} <= sim_names
    text = report.report_text(snap)
    assert "exits by reason: EXTERNAL_INTERRUPT:" in text and "exit reasons as numbers" not in text
    js = report.report_json(snap)
    assert set(js["vms"][0]["exits_by_reason"]) <= sim_names
    json.dumps(js, default=str)
    st = report.stat_json(snap, [], vms=[snap.vms[0].vm])
    assert [v["vm"] for v in st["vms"]] == [snap.vms[0].vm]
    assert st["vms"][0]["exits_total"] == sum(st["vms"][0]["exits_by_reason"].values()) > 0
    assert set(st["vms"][0]["exits_by_reason"]) <= sim_names
    scraped = "".join(x.decode() for x in renderer(lambda: snap)())
    reasons = {s.labels["reason"] for f in text_string_to_metric_families(scraped) for s in f.samples
               if s.name == "vtrace_kvm_exits_total"}
    assert reasons and reasons <= sim_names


class _AmdHost(ScriptedSource):
    """A source as a live one on an AMD host reports it: kvm_amd loaded."""
    info = {"source": "live", "host": "amd1", "kvm_isa": "svm"}

    def batches(self):
        codes = [c for c, n in zip(AMD, (5, 3, 2, 2, 1)) for _ in range(n)]
        yield batch([ev(Kind.KVM_EXIT, 100 + i, obj=KVM, layer=Layer.KVM, id=c) for i, c in enumerate(codes)])


def test_a_capture_keeps_the_isa_and_its_replay_names_exits_as_on_the_traced_host(tmp_path):
    path = str(tmp_path / "amd.vtrace")
    src = _AmdHost()
    w = CaptureWriter(path, header_for(src, ["vtrace", "record"]))
    live = Pipeline(src, writer=w).run()
    w.close()
    replay = ReplaySource(path)
    assert replay.info["kvm_isa"] == "svm" and replay.info["recorded_source"] == "live"
    snap = Pipeline(replay).run()
    assert snap.vms[0].exits_by_reason == live.vms[0].exits_by_reason == (
        ("INTR", 3), ("CPUID", 2), ("IOIO", 5), ("MSR", 2), ("NPF", 1))
    assert "vm1 exits by reason: INTR:3, CPUID:2, IOIO:5, MSR:2, NPF:1" in report.report_text(snap)


def test_a_sim_capture_replays_as_vmx(tmp_path):
    path = str(tmp_path / "sim.vtrace")
    src = _sim()
    w = CaptureWriter(path, header_for(src, ["vtrace", "record"]))
    Pipeline(src, writer=w).run()
    w.close()
    replay = ReplaySource(path)
    assert replay.info["kvm_isa"] == "vmx"
    assert any(r == "HLT" for v in Pipeline(replay).run().vms for r, _ in v.exits_by_reason)


def test_an_old_capture_without_the_isa_shows_numbers(tmp_path):
    class Old(_AmdHost):
        info = {"source": "live", "host": "old"}  # written before vtrace recorded kvm_isa
    path = str(tmp_path / "old.vtrace")
    src = Old()
    w = CaptureWriter(path, header_for(src, ["vtrace", "record"]))
    Pipeline(src, writer=w).run()
    w.close()
    snap = Pipeline(ReplaySource(path)).run()
    assert dict(snap.vms[0].exits_by_reason) == {"96": 3, "114": 2, "123": 5, "124": 2, "1024": 1}
    text = report.report_text(snap)
    assert "exit reasons as numbers: the source does not say whether the host ran VMX or SVM" in text
