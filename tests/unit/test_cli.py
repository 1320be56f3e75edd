"""Every command through click's CliRunner; bad input is one line and exit 2."""

import json
import os
import stat

import pytest
from click.testing import CliRunner

from vtrace.cli import cli

SIM = "sim:vms=2,seed=3"


@pytest.fixture()
def run():
    def _run(*args, **kw):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)
    return _run


@pytest.fixture(scope="module")
def capfile(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "run.vtrace"
    r = CliRunner().invoke(cli, ["capture", "--source", SIM, "-d", "2s", "-o", str(p)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return p


def one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_version_and_help(run):
    assert run("--version").output.strip() == "vtrace 0.1.0"
    for cmd in ("stat", "capture", "report", "convert"):
        out = run(cmd, "--help").output
        assert "Examples:" in out and "vtrace " + cmd in out, cmd
    assert "Hit Ctrl-C" not in run("--help").output


def test_stat_table(run):
    r = run("stat", "--source", "sim:vms=2,seed=3", "0.2", "2")
    assert r.exit_code == 0, r.output
    assert "Hit Ctrl-C to end." in r.output and "simulated host" in r.output
    lines = r.output.splitlines()
    assert sum(1 for x in lines if x.startswith("VM ")) == 2
    rows = [x for x in lines if x.startswith(("web1 ", "web2 "))]
    assert len(rows) >= 2 * 10  # net rx/tx x2, blk, vsock rx/tx per VM, twice
    assert max(len(x) for x in lines) < 80


def test_stat_json_filters_and_sort(run):
    r = run("stat", "--source", SIM, "-j", "--vm", "web2", "-s", "p99", "-n", "3", "0.5", "2")
    assert r.exit_code == 0
    objs = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert len(objs) == 2
    for o in objs:
        assert o["simulated"] is True and len(o["queues"]) == 3
        assert {q["vm"] for q in o["queues"]} == {"web2"}
        p99 = [q["p99_ns"] or 0 for q in o["queues"]]
        assert p99 == sorted(p99, reverse=True)


def test_stat_replay_gives_per_second_rows_of_the_capture(run, capfile):
    r = run("stat", "--source", f"replay:{capfile}", "-j", "1")
    objs = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert len(objs) == 2  # a 2 s capture: two 1 s intervals
    assert all(abs(o["interval_ns"] - 1e9) < 2e7 for o in objs)


def test_capture_report_convert(run, capfile, tmp_path):
    assert stat.S_IMODE(os.stat(capfile).st_mode) == 0o600
    r = run("report", str(capfile))
    assert r.exit_code == 0
    for section in ("QUEUES", "COMPLETION LATENCY", "ADMIN COMMANDS", "KVM AND DMA", "EVENTS BY KIND"):
        assert section in r.output, section
    assert "replay of sim (simulated host)" in r.output
    j = json.loads(run("report", "-j", str(capfile)).output)
    assert j["events_total"] > 100_000 and j["source"]["simulated"] is True
    assert sum(len(q["latency_hist"]) == 64 for q in j["queues"]) == len(j["queues"])

    out = tmp_path / "t.json"
    r = run("convert", str(capfile), "--to", "perfetto", "-o", str(out))
    assert r.exit_code == 0, r.output
    trace = json.loads(out.read_text())
    phases = {e["ph"] for e in trace["traceEvents"]}
    assert {"M", "X", "s", "f", "i", "C"} <= phases
    jl = tmp_path / "t.jsonl"
    assert run("convert", str(capfile), "--to", "jsonl", "-o", str(jl)).exit_code == 0
    r2 = run("report", "-j", str(jl))
    assert json.loads(r2.output)["events_total"] == j["events_total"]
    # existing output is not clobbered without --force
    assert "exists" in one_line_error(run("convert", str(capfile), "--to", "jsonl", "-o", str(jl)))


def test_truncated_capture_reports_up_to_the_damage(run, capfile, tmp_path):
    data = capfile.read_bytes()
    t = tmp_path / "cut.vtrace"
    t.write_bytes(data[: len(data) // 2])
    r = run("report", "-j", str(t))
    assert r.exit_code == 0
    body, warn = r.output.split("\nvtrace: warning: ")
    j = json.loads(body)
    assert 0 < j["events_total"] and j["damage"]
    assert "truncated chunk" in warn and str(t) in warn


@pytest.mark.parametrize("args,needle", [
    (["stat", "--source", "warp", "1", "1"], "unknown source"),
    (["stat", "--source", "sim:vms=zero", "1", "1"], "bad value"),
    (["stat", "--source", "replay:/nonexistent.vtrace"], "cannot read"),
    (["stat", "--source", "sim", "soon"], "bad duration"),
    (["stat", "--source", "sim", "1", "0"], "COUNT"),
    (["capture", "-d", "10x", "--source", "sim"], "bad duration"),
    (["capture", "-d", "-1s", "--source", "sim"], "bad duration"),
    (["capture", "-d", "1s", "--source", "sim", "-o", "/nonexistent/dir/x.vtrace"], "cannot write"),
    (["report", "/nonexistent.vtrace"], "cannot read"),
    (["convert", "/nonexistent.vtrace", "--to", "jsonl"], "cannot read"),
    (["convert", "x", "--to", "pdf"], "pdf"),
])
def test_bad_input_is_one_line_exit_2(run, args, needle):
    r = run(*args)
    line = one_line_error(r)
    assert needle in line, line


def test_garbage_file(run, tmp_path):
    g = tmp_path / "garbage.vtrace"
    g.write_bytes(os.urandom(5000))
    assert "not a vtrace capture" in one_line_error(run("report", str(g)))
    e = tmp_path / "empty"
    e.write_bytes(b"")
    assert "empty" in one_line_error(run("report", str(e)))


def test_capture_refuses_to_clobber(run, capfile):
    before = capfile.read_bytes()
    line = one_line_error(run("capture", "--source", SIM, "-d", "1s", "-o", str(capfile)))
    assert "--force" in line and capfile.read_bytes() == before


def test_auto_source_falls_back_to_sim_with_notice(run, monkeypatch):
    import vtrace.sources as sources
    monkeypatch.setattr(sources, "live_available", lambda: (False, "live tracing needs root; see vtrace doctor"))
    r = run("stat", "0.1", "1")
    assert r.exit_code == 0
    assert "using the simulated host (--source sim)" in r.output
    assert "live tracing unavailable (live tracing needs root" in r.output


def test_live_with_an_unknown_program_is_one_line_naming_the_known(run):
    line = one_line_error(run("stat", "--source", "live:vhost,kmv", "1", "1"))
    assert "unknown program kmv" in line and "vhost, virtio, block, kvm" in line


def test_live_program_list_loads_only_those(run, monkeypatch):
    """live:kvm,vhost compiles those two programs, in the probe table's order."""
    import vtrace.live.source as live
    import vtrace.sources as sources
    asked = []

    class Refused(live.LiveSource):
        def __init__(self, **kw):
            asked.append(kw["programs"])
            raise live.LiveError("stopped here")
    monkeypatch.setattr(sources, "live_available", lambda: (True, ""))
    monkeypatch.setattr(live, "LiveSource", Refused)
    assert "stopped here" in one_line_error(run("stat", "--source", "live:kvm,vhost", "1", "1"))
    assert asked == [("vhost", "kvm")]


def test_live_refused_says_why_and_names_sim(run, monkeypatch):
    import vtrace.sources as sources
    monkeypatch.setattr(sources, "live_available", lambda: (False, "bcc is not importable"))
    line = one_line_error(run("stat", "--source", "live", "1", "1"))
    assert "bcc is not importable" in line and "--source sim" in line


def test_convert_leaves_no_temp_file_when_the_write_fails(run, capfile, tmp_path, monkeypatch):
    import vtrace.jsonl as jsonl

    def broken(out, header, batches):
        out.write("{")
        raise OSError("disk full")
    monkeypatch.setattr(jsonl, "write_jsonl", broken)
    out = tmp_path / "x.jsonl"
    assert "internal error: OSError: disk full" in one_line_error(
        run("convert", str(capfile), "--to", "jsonl", "-o", str(out)), code=3)
    assert os.listdir(tmp_path) == []


def test_bpf_stats_knob_is_put_back_however_the_block_ends(tmp_path):
    from vtrace.kernel import bpfstats
    knob = tmp_path / "bpf_stats_enabled"
    knob.write_text("0\n")
    with bpfstats.enabled(str(knob)):
        assert knob.read_text() == "1"
    assert knob.read_text() == "0"
    with pytest.raises(RuntimeError), bpfstats.enabled(str(knob)):
        raise RuntimeError("probes failed")
    assert knob.read_text() == "0"
    with pytest.raises(bpfstats.BpfStatsError, match="cannot enable BPF statistics"):
        with bpfstats.enabled(str(tmp_path / "missing" / "knob")):
            pass


def test_probe_tables_mark_uncounted_misses():
    from vtrace import probetable
    from vtrace.events import ProbeStatus
    pts = [ProbeStatus(layer="kvm", point="exit", strategy="tracepoint:kvm:kvm_exit", attached=True, error="",
                       missed=1234, uncounted="tracepoint runs skipped under recursion"),
           ProbeStatus(layer="vhost", point="fetch", strategy="-", attached=False, error="no kprobes",
                       missed=0, uncounted="")]
    lines = probetable.status_lines(pts)
    assert lines[0].split() == ["LAYER", "POINT", "STRATEGY", "MISSED", "STATUS"]
    assert lines[1].split()[3:] == ["1,234+?", "attached"] and lines[2].endswith("- failed: no kprobes")
    assert lines[3:] == ["", "+? not counted by this kernel:", "  exit: tracepoint runs skipped under recursion"]
    rows = [("kvm", "exit", 100, 25_000)]
    status = {"exit": pts[0]}
    assert probetable.stats_lines(rows, status)[1].split() == ["kvm", "exit", "100", "250", "1,234+?"]
    assert probetable.stats_json(rows, status) == [{"layer": "kvm", "point": "exit", "run_cnt": 100,
                                                    "run_time_ns": 25_000, "ns_per_hit": 250.0, "missed": 1234,
                                                    "uncounted": "tracepoint runs skipped under recursion"}]
