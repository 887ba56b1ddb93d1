"""exec-filter's own metrics endpoint and drift state, on the real child process."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from test_execfilter import read_json_record

from support import load_event


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(url, deadline=20.0):
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _records_total(text):
    totals = {}
    for family in text_string_to_metric_families(text):
        if family.name == "atnorm_records":
            for sample in family.samples:
                if sample.name == "atnorm_records_total":
                    outcome = sample.labels["outcome"]
                    totals[outcome] = totals.get(outcome, 0) + sample.value
    return totals


def test_metrics_endpoint_counts_what_went_through_and_drift_is_saved(tmp_path):
    port = _free_port()
    drift_state = tmp_path / "drift.json"
    child = subprocess.Popen(
        [sys.executable, "-m", "atnorm", "exec-filter", "--out-format", "json", "--tag-key", "tag", "--quiet",
         "--metrics-listen", f"127.0.0.1:{port}", "--drift-state", str(drift_state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    valid = dict(load_event("vsi-provision.json"), tag="app.audit")
    unknown = dict(load_event("vsi-provision.json"), action="audit-log.vsi.teleport", tag="app.audit")
    other = {"message": "plain log", "tag": "app.audit"}
    lines = [valid] * 5 + [unknown] * 3 + [other] * 2
    child.stdin.write(("\n".join(json.dumps(r) for r in lines) + "\n").encode())
    child.stdin.flush()
    outputs = [read_json_record(child.stdout) for _ in lines]
    assert all(outputs)
    totals = _records_total(_scrape(f"http://127.0.0.1:{port}/metrics"))
    assert totals == {"accepted": 5.0, "rejected": 3.0, "passed": 2.0}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
        assert response.status == 200
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    assert child.stderr.read() == b""
    state = json.loads(drift_state.read_text())
    assert "audit-log.vsi.teleport" in json.dumps(state)
