"""`vtrace export` scraped by a real Prometheus: every PromQL expression the
dashboard and the rules use returns data; promtool accepts the exposition
and the rules; TLS and basic auth work with real clients."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error

import bcrypt
import pytest

from dashboards import build as dash
from tests.system.exporter import VTRACE, exporter, get, need, prometheus, query, wait_for
from vtrace.export.web import MAX_CONNECTIONS

RULES = os.path.join(os.path.dirname(dash.PATH), "..", "prometheus", "vtrace-rules.yml")
# A simulated host that misbehaves in every way an alert watches for.
FAULTY = "sim:seed=7,vms=2,lost_every=1,fault=used_twice+admin_error"
# Alerts whose condition needs minutes of a state or a slow device; for them
# the test runs the expression they compare (it must return data) instead.
NOT_FIRING_IN_A_SHORT_RUN = {
    "VtraceQueueStalled": ["vtrace_queue_in_flight_buffers >= 0",
                           "rate(vtrace_queue_used_buffers_total[2m]) >= 0"],
    "VtraceQueueLatencyHigh": ["vtrace:queue_completion_latency_seconds:p99_5m"],
}
# Metrics only a guest's own driver gives (the live `virtio` program inside a
# VM); the simulated host has none. Dashboard panels on them are checked
# against a live exporter in this guest instead (tests/live/test_live_export.py).
GUEST_ONLY_METRICS = ("vtrace_queue_interrupt_free_descriptors",)


def guest_only(expr: str) -> bool:
    return any(m in expr for m in GUEST_ONLY_METRICS)


@pytest.fixture(autouse=True)
def _tools():
    need("prometheus", "promtool", "openssl", "curl")


def _dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(open(dash.PATH).read())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            e = t["expr"].replace("$__rate_interval", "30s")
            e = re.sub(r'=~"\$\w+"', '=~".*"', e)
            assert "$" not in e, e
            out.append((p["title"], e))
    return out


def _rules() -> tuple[list[str], list[tuple[str, str]]]:
    import yaml
    doc = yaml.safe_load(open(RULES))
    records, alerts = [], []
    for g in doc["groups"]:
        for r in g["rules"]:
            if "record" in r:
                records.append(r["record"])
            else:
                alerts.append((r["alert"], r["expr"]))
    return records, alerts


def _tls_files(tmp) -> dict:
    """A CA and a server certificate for 127.0.0.1, made by openssl."""
    p = {k: os.path.join(tmp, k) for k in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt", "ext")}
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.crt"],
        "-days", "2", "-subj", "/CN=vtrace test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p["srv.key"], "-out", p["srv.csr"],
        "-subj", "/CN=127.0.0.1")
    with open(p["ext"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", p["srv.csr"], "-CA", p["ca.crt"], "-CAkey", p["ca.key"], "-CAcreateserial",
        "-out", p["srv.crt"], "-days", "2", "-extfile", p["ext"])
    return p


def _web_config(tmp, tls: dict | None, users: dict[str, str]) -> str:
    doc = {}
    if tls:
        doc["tls_server_config"] = {"cert_file": tls["srv.crt"], "key_file": tls["srv.key"]}
    if users:
        doc["basic_auth_users"] = {u: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=6)).decode()
                                   for u, pw in users.items()}
    path = os.path.join(tmp, "web.yml")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def _value(body: bytes, name: str) -> float:
    line = next(x for x in body.decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_promtool_accepts_the_exposition_and_the_rules(tmp_path):
    with exporter(source=FAULTY) as url:
        time.sleep(1.5)
        status, body = get(url + "/metrics")
    assert status == 200 and b"vtrace_queue_used_buffers_total{" in body
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)
    r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # no unbounded labels: never a pid, a head or a pointer
    labels = set(re.findall(rb"[{,](\w+)=", body))
    assert not labels & {b"pid", b"head", b"obj", b"id"}, labels


def test_real_prometheus_scrapes_over_tls_with_basic_auth_and_every_expression_returns_data(tmp_path):
    tls = _tls_files(str(tmp_path))
    web = _web_config(str(tmp_path), tls, {"prometheus": "s3cret"})
    with open(tmp_path / "pass", "w") as f:
        f.write("s3cret")
    with exporter("--web-config", web, source=FAULTY) as url:
        assert url.startswith("https://")
        target = url.split("://", 1)[1]
        scrape = {"scheme": "https", "tls_config": {"ca_file": tls["ca.crt"]},
                  "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "pass")},
                  "static_configs": [{"targets": [target]}]}
        with prometheus(str(tmp_path), scrape, [RULES]) as prom:
            wait_for(lambda: query(prom, 'up{job="vtrace"} == 1'), 30, "the target to be up")
            # enough scrapes for rate() over 30s and for the rules to evaluate
            wait_for(lambda: query(prom, 'count_over_time(up{job="vtrace"}[1m]) >= 8'), 60, "8 scrapes")
            wait_for(lambda: query(prom, "vtrace:queue_used_buffers:rate5m"), 30, "the recording rules")
            # the sim's first VF migration is 7 s in (SimConfig.suspend_every)
            wait_for(lambda: query(prom, "rate(vtrace_vfio_migration_arcs_total[30s])"), 30,
                     "the simulated VF's first migration")
            exprs = _dashboard_exprs()
            assert any(guest_only(e) for _t, e in exprs)  # tests/live/test_live_export.py has them
            empty = [(title, e) for title, e in exprs if not guest_only(e) and not query(prom, e)]
            assert not empty, f"dashboard queries with no data: {empty}"
            records, alerts = _rules()
            assert not [r for r in records if not query(prom, r)]
            for name, expr in alerts:
                for e in NOT_FIRING_IN_A_SHORT_RUN.get(name, [expr]):
                    assert query(prom, e), (name, e)
            # what a scrape costs shows up as a metric too
            assert query(prom, "vtrace_scrape_collect_duration_seconds > 0")


def test_basic_auth_with_curl(tmp_path):
    web = _web_config(str(tmp_path), None, {"alice": "right"})
    with exporter("--web-config", web) as url:
        def curl(*a):
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *a, url + "/metrics"],
                               capture_output=True, text=True, timeout=30)
            return r.stdout
        assert curl() == "401"
        assert curl("-u", "alice:wrong") == "401"
        assert curl("-u", "bob:right") == "401"
        assert curl("-u", "alice:right") == "200"
        assert curl("-u", "alice:right") == "200"  # the second one from the verified-credential cache
        r = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url + "/metrics"], capture_output=True,
                           text=True, timeout=30)
        assert 'WWW-Authenticate: Basic realm="vtrace"' in r.stdout


def test_tls_refuses_plain_http_and_keeps_serving(tmp_path):
    tls = _tls_files(str(tmp_path))
    web = _web_config(str(tmp_path), tls, {})
    with exporter("--web-config", web) as url:
        plain = url.replace("https://", "http://")
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                            plain + "/metrics"], capture_output=True, text=True)
        assert r.stdout in ("000", "400"), r.stdout  # no metrics over plain HTTP
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(url + "/metrics")  # an unknown CA is refused by a verifying client
        status, body = get(url + "/metrics", ca=tls["ca.crt"])
        assert status == 200 and b"vtrace_events_total" in body
        # ... and the failed handshakes are counted, not silent
        assert _value(body, "vtrace_exporter_tls_handshake_failures_total") >= 1


def test_slow_and_abusive_clients_do_not_stall_the_exporter(tmp_path):
    with exporter() as url:
        host, port = url.split("://")[1].split(":")
        # 40 connections that never send a request (slowloris) ...
        idle = [socket.create_connection((host, int(port))) for _ in range(40)]
        # ... and one that sends a 1 MB header line
        big = socket.create_connection((host, int(port)))
        big.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        try:
            t0 = time.monotonic()
            status, body = get(url + "/metrics", timeout=10)
            assert status == 200 and b"vtrace_queue_used_buffers_total" in body
            assert time.monotonic() - t0 < 5
            big.settimeout(10)
            reply = big.recv(200)
            assert reply.startswith(b"HTTP/1.") and b" 431 " in reply.split(b"\r\n")[0] or b" 400 " in reply
            # the idle ones are dropped after the connection timeout
            idle[0].settimeout(15)
            assert idle[0].recv(10) == b""
        finally:
            for s in idle + [big]:
                s.close()
        # many scrapes at once all succeed
        res = []
        ths = [threading.Thread(target=lambda: res.append(get(url + "/metrics")[0])) for _ in range(20)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(30)
        assert res == [200] * 20
        # More than MAX_CONNECTIONS at once: the extra ones are closed at accept
        # and counted; once the idle ones time out, scrapes are served again.
        flood = [socket.create_connection((host, int(port))) for _ in range(MAX_CONNECTIONS + 6)]
        try:
            flood[0].settimeout(15)
            assert flood[0].recv(10) == b""
        finally:
            for s in flood:
                s.close()
        status, body = get(url + "/metrics", timeout=10)
        assert status == 200 and _value(body, "vtrace_exporter_connections_rejected_total") >= 6


@pytest.mark.parametrize("doc,msg", [
    ("tls_server_config: {cert_file: nope.crt, key_file: nope.key}", "cannot load cert_file/key_file"),
    ("basic_auth_users: {alice: plaintext}", "not a bcrypt hash"),
    ("tls_server_confg: {}", "unknown key 'tls_server_confg'"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS9}", "unknown TLS version"),
    ("[1, 2", "not valid YAML"),
])
def test_bad_web_config_is_one_line_and_exit_2(tmp_path, doc, msg):
    p = tmp_path / "web.yml"
    p.write_text(doc)
    r = subprocess.run([*VTRACE, "export",
                        "--source", "sim", "--listen", "127.0.0.1:0", "--web-config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
