"""Start `vtrace export` and real Prometheus servers for the system tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

from tests.tiers import require

VTRACE = [sys.executable, "-m", "vtrace.cli"]


def need(*tools: str) -> None:
    for t in tools:
        require(shutil.which(t) is not None, f"{t} not installed (scripts/install-system-deps.sh)", "system")


@contextlib.contextmanager
def exporter(*args: str, source: str = "sim:seed=7,vms=2"):
    """A running `vtrace export` on a free loopback port; yields its base URL."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(VTRACE + ["export", "--source", source, "--listen", "127.0.0.1:0", *args],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        line = p.stderr.readline()
        m = re.search(r"Serving metrics on (\S+)/metrics", line)
        assert m, f"exporter did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
        yield m.group(1)
    finally:
        _stop(p, 15)
        p.stderr.close()


def _stop(p: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, *, auth: tuple[str, str] | None = None, ca: str | None = None, timeout: float = 10):
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url)
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def prometheus(tmp, scrape: dict, rules: list[str] = ()):
    """A real Prometheus server scraping every second; yields its API base URL."""
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [os.path.abspath(r) for r in rules],
           "scrape_configs": [dict({"job_name": "vtrace", "scrape_timeout": "1s"}, **scrape)]}
    path = os.path.join(tmp, "prometheus.yml")
    with open(path, "w") as f:
        json.dump(cfg, f)  # JSON is YAML
    log = open(os.path.join(tmp, "prometheus.log"), "w")
    p = subprocess.Popen(["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp}/data",
                          f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert p.poll() is None, open(log.name).read()[-2000:]
        try:
            return get(f"{base}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "prometheus to be ready")
        yield base
    finally:
        _stop(p, 20)
        log.close()


def query(base: str, expr: str) -> list:
    status, body = get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", (expr, doc)
    return doc["data"]["result"]


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
