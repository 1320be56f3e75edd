"""The Grafana dashboard follows the rules its generator promises; the
committed JSON is the generator's output."""

import json
import re

from dashboards import build
from vtrace.export.families import ALL, COUNTER, HISTOGRAM, SUMMARY


def test_committed_dashboard_is_the_generators_output():
    assert open(build.PATH).read() == build.render(), "run: python dashboards/build.py"


def test_every_panel_uses_the_datasource_variable_and_rate_interval():
    d = json.loads(build.render())
    assert d["uid"] == "vtrace-overview"
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in d["templating"]["list"])
    targets = 0
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            targets += 1
            assert t["datasource"]["uid"] == "${datasource}"
            for window in re.findall(r"(?:rate|increase)\([^\[]*\[([^\]]+)\]", t["expr"]):
                assert window == "$__rate_interval", (p["title"], t["expr"])
    assert targets >= 20
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_drill_down_variables_chain_host_vm_device_queue():
    v = {x["name"]: x for x in json.loads(build.render())["templating"]["list"]}
    assert "$instance" in v["vm"]["query"]["query"]
    assert "$vm" in v["device"]["query"]["query"]
    assert "$device" in v["queue"]["query"]["query"]


def test_every_metric_the_dashboard_queries_is_a_family_the_exporter_serves():
    served = set()
    for f in ALL:
        served.add(f.sample_name)
        if f.type == HISTOGRAM:
            served |= {f.name + "_bucket", f.name + "_sum", f.name + "_count"}
        elif f.type == SUMMARY:
            served |= {f.name + "_sum", f.name + "_count"}
        elif f.type == COUNTER:
            served.add(f.name + "_total")
    used = set(re.findall(r"\bvtrace_[a-z_]+", build.render()))
    assert used and used <= served, sorted(used - served)
