"""Monitoring: the Prometheus endpoint, health/readiness, stats records, dashboard and alerts.

Traffic goes through the real EventFilter; the endpoint is scraped over loopback HTTP and
parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from atnorm.config.options import ConfigError
from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.core.reload import ReloadingFilter
from atnorm.core.stats import MAX_TRACKED_UNKNOWN_ACTIONS, MAX_TRACKED_UNSCHEMED_SERVICES, OTHER, FilterStats
from atnorm.monitoring.metrics import MetricsServer, build_registry, start_metrics_server
from atnorm.monitoring.relaystats import RelayStats
from atnorm.monitoring.stats_record import StatsRecorder, StatsThread, build_stats_record

MONITORING = Path(__file__).resolve().parent.parent / "conf" / "monitoring"

# ---------------------------------------------------------------------------------------
# Small real-looking events, one per kind of traffic.


def vmware_event(action: str = "vmware-solutions.vcs.create", **changes) -> dict:
    event = {
        "action": action,
        "eventTime": "2024-05-01T10:00:00.12+0000",
        "outcome": "success",
        "severity": "normal",
        "message": "VMware Solutions: create instance",
        "logSourceCRN": "crn:v1:bluemix:public:vmware-solutions:us-south:a/0123456789abcdef::",
        "saveServiceCopy": False,
        "dataEvent": False,
        "observer": {"name": "ActivityTracker"},
        "initiator": {
            "id": "IBMid-270000ABCD",
            "name": "ops@example.com",
            "typeURI": "service/security/account/user",
            "credential": {"type": "token"},
            "host": {"address": "192.0.2.10", "addressType": "IPv4", "agent": "console"},
        },
        "target": {
            "id": "crn:v1:bluemix:public:vmware-solutions:us-south:a/0123456789abcdef:inst-1::",
            "name": "prod-vcs",
            "typeURI": "vmware-solutions/vcs",
        },
        "reason": {"reasonCode": 200, "reasonType": "OK"},
    }
    event.update(changes)
    return event


def vsi_event(action: str = "audit-log.vsi.reboot") -> dict:
    return {
        "action": action,
        "eventTime": "2024-05-01T11:30:05Z",
        "outcome": "success",
        "severity": "warning",
        "message": "Virtual Server: reboot instance",
        "observer": {"name": "ActivityTracker"},
        "initiator": {
            "id": "IBMid-310000WXYZ",
            "typeURI": "service/security/account/user",
            "credential": {"type": "apikey"},
            "host": {"address": "198.51.100.7", "addressType": "IPv4"},
        },
        "target": {"id": "crn:v1:bluemix:public:virtual-servers:dal10:a/0123456789abcdef::vsi:12345",
                   "typeURI": "virtual-servers/instance"},
    }


def platform_log() -> dict:
    # Shares a chain with AT events but is not one (no action / initiator / target).
    return {"message": "kubelet: pod restarted", "saveServiceCopy": False,
            "logSourceCRN": "crn:v1:bluemix:public:containers-kubernetes:us-south:a/0123::"}


def scrape(url: str) -> Dict[str, object]:
    """GET /metrics and parse it: family name → family."""
    with urllib.request.urlopen(url + "/metrics") as response:
        body = response.read().decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(body)}


def samples(families: Dict[str, object], family: str, suffix: str = "") -> Dict[Tuple, float]:
    """labels (as sorted tuple) → value for one family's samples named family+suffix."""
    out: Dict[Tuple, float] = {}
    for sample in families[family].samples:
        if sample.name == family + suffix:
            out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def http_status(url: str) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


@pytest.fixture(scope="module")
def event_filter_factory():
    return EventFilter.from_schemas


@pytest.fixture
def served():
    """Start servers on 127.0.0.1:0 and stop them after the test."""
    started: List[MetricsServer] = []

    def start(**kwargs) -> MetricsServer:
        server = start_metrics_server(("127.0.0.1", 0), **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------------------------------
# Counts reconcile with the traffic sent


def send_mix(event_filter) -> Dict[str, list]:
    """A known mix: returns the verdicts by the kind of record sent."""
    sent: Dict[str, list] = {"valid_vmware": [], "valid_vsi": [], "invalid_vmware": [],
                             "bad_json": [], "platform": []}
    for _ in range(7):
        sent["valid_vmware"].append(event_filter.process(vmware_event()))
    for _ in range(5):
        sent["valid_vsi"].append(event_filter.process(vsi_event()))
    for _ in range(3):
        broken = vmware_event()
        del broken["target"]  # required
        sent["invalid_vmware"].append(event_filter.process(broken))
    for line in (b'{"action": "vmware-solutions.vcs.create", ', b"\xff\xfe not utf-8", b"[1, 2"):
        sent["bad_json"].append(event_filter.process_json(line))
    for _ in range(4):
        sent["platform"].append(event_filter.process(platform_log()))
    return sent


def test_scrape_reconciles_with_records_sent(served):
    event_filter = EventFilter.from_schemas()
    server = served(filter_stats=event_filter.stats)
    sent = send_mix(event_filter)

    # The filter decided what the traffic says it should.
    assert {v.outcome for v in sent["valid_vmware"] + sent["valid_vsi"]} == {"accepted"}
    assert {v.outcome for v in sent["invalid_vmware"] + sent["bad_json"]} == {"rejected"}
    assert {v.outcome for v in sent["platform"]} == {"passed"}

    families = scrape(server.url)
    records = samples(families, "atnorm_records", "_total")
    by_outcome: Counter = Counter()
    by_outcome_service: Counter = Counter()
    for labels, value in records.items():
        labels = dict(labels)
        by_outcome[labels["outcome"]] += value
        by_outcome_service[(labels["outcome"], labels["service"])] += value

    total_sent = sum(len(v) for v in sent.values())
    assert sum(by_outcome.values()) == total_sent == 22
    assert by_outcome == {"accepted": 12, "rejected": 6, "passed": 4}

    expected: Counter = Counter()
    for verdict in (v for verdicts in sent.values() for v in verdicts):
        expected[(verdict.outcome, verdict.service or "_none")] += 1
    assert {k: v for k, v in by_outcome_service.items() if v} == dict(expected)
    accepted_services = {s for (o, s), n in by_outcome_service.items() if o == "accepted" and n}
    assert len(accepted_services) == 2  # the VMware and the VSI service, told apart
    assert by_outcome_service[("passed", "_none")] == 4

    # Every rejection reason and warning on the verdicts is counted under its rule / kind.
    reasons: Counter = Counter()
    warnings: Counter = Counter()
    for verdict in (v for verdicts in sent.values() for v in verdicts):
        for reason in verdict.reasons:
            reasons[(reason.rule, verdict.service or "_none")] += 1
        warnings.update(verdict.warnings)
    rejections = {(dict(k)["rule"], dict(k)["service"]): v
                  for k, v in samples(families, "atnorm_rejections", "_total").items()}
    assert rejections == dict(reasons)
    assert len(rejections) >= 2  # a schema rule and the bad-input rule(s)
    scraped_warnings = {dict(k)["kind"]: v for k, v in samples(families, "atnorm_warnings", "_total").items()}
    assert scraped_warnings == dict(warnings)

    # The scrape follows new traffic.
    event_filter.process(vmware_event())
    again = samples(scrape(server.url), "atnorm_records", "_total")
    assert sum(again.values()) == total_sent + 1


def test_unknown_actions_stay_within_the_tracking_bound(served):
    event_filter = EventFilter.from_schemas()
    server = served(filter_stats=event_filter.stats)
    distinct = MAX_TRACKED_UNKNOWN_ACTIONS + 25
    for i in range(distinct):
        event_filter.process(vmware_event(action=f"vmware-solutions.gadget-{i}.create"))
    event_filter.process(vmware_event(action="vmware-solutions.gadget-0.create"))

    unknown = samples(scrape(server.url), "atnorm_unknown_actions", "_total")
    actions = [dict(labels)["action"] for labels in unknown]
    assert sum(unknown.values()) == distinct + 1  # nothing lost, only aggregated
    assert len(unknown) <= MAX_TRACKED_UNKNOWN_ACTIONS + 1
    assert OTHER in actions
    first = (("action", "vmware-solutions.gadget-0.create"), ("service", "vmware-solutions"))
    assert unknown[first] == 2
    other = (("action", OTHER), ("service", "vmware-solutions"))
    assert unknown[other] == distinct - MAX_TRACKED_UNKNOWN_ACTIONS


def test_services_without_a_schema_are_counted_under_their_name(served):
    event_filter = EventFilter.from_schemas()
    server = served(filter_stats=event_filter.stats)
    accepted = event_filter.process(vmware_event(action="is.instance.instance.create"))
    broken = vmware_event(action="is.instance.instance.create")
    del broken["outcome"]
    rejected = event_filter.process(broken)
    unreadable = event_filter.process_json(b"not json")
    assert (accepted.outcome, rejected.outcome, unreadable.outcome) == ("accepted", "rejected", "rejected")

    families = scrape(server.url)
    records = {(dict(k)["outcome"], dict(k)["service"]): v
               for k, v in samples(families, "atnorm_records", "_total").items() if v}
    assert records == {("accepted", "is"): 1, ("rejected", "is"): 1, ("rejected", "_none"): 1}
    rejections = {(dict(k)["rule"], dict(k)["service"]): v
                  for k, v in samples(families, "atnorm_rejections", "_total").items()}
    assert rejections[("envelope.required", "is")] == 1
    assert rejections[("record.json", "_none")] == 1


def test_names_of_services_without_a_schema_stay_within_a_bound(served):
    event_filter = EventFilter.from_schemas()
    server = served(filter_stats=event_filter.stats)
    distinct = MAX_TRACKED_UNSCHEMED_SERVICES + 10
    for i in range(distinct):
        event_filter.process(vmware_event(action=f"svc{i}.thing.create"))
    event_filter.process(vmware_event(action="vmware-solutions.vcs.create"))  # its schema's name, always

    records = {dict(k)["service"]: v for k, v in samples(scrape(server.url), "atnorm_records", "_total").items()
               if v}
    assert sum(records.values()) == distinct + 1  # nothing lost, only aggregated
    assert records[OTHER] == 10
    assert records["svc0"] == 1 and records["vmware-solutions"] == 1
    assert len(records) == MAX_TRACKED_UNSCHEMED_SERVICES + 2


def test_scrapes_while_records_flow_see_consistent_growing_counts(served):
    event_filter = EventFilter.from_schemas()
    server = served(filter_stats=event_filter.stats)
    total = 3000
    finished = threading.Event()

    def traffic() -> None:
        for i in range(total):
            # New label sets keep appearing while the scraper reads the counters.
            event_filter.process(vmware_event(action=f"vmware-solutions.widget-{i % 150}.update")
                                 if i % 3 == 0 else platform_log())
        finished.set()

    worker = threading.Thread(target=traffic)
    worker.start()
    seen = []
    while not finished.is_set():
        seen.append(sum(samples(scrape(server.url), "atnorm_records", "_total").values()))
    worker.join()
    seen.append(sum(samples(scrape(server.url), "atnorm_records", "_total").values()))
    assert seen == sorted(seen)
    assert seen[-1] == total


# ---------------------------------------------------------------------------------------
# Relay counters


def test_relay_counters_and_latency_histogram_are_exported(served):
    relay = RelayStats()
    relay.connections_opened = 5
    relay.connections_active = 2
    relay.bytes_received = 4096
    relay.records_received = 30
    relay.handler_failures = 4
    relay.frames["packed_forward"] += 9
    relay.protocol_errors["malformed"] += 3
    relay.acks_sent = 9
    relay.duplicate_chunks = 1
    relay.bytes_sent = 2048
    relay.chunks_sent = 8
    relay.retries = 2
    relay.failovers = 1
    relay.spool_depth_records = 120
    relay.spool_oldest_age_seconds = 42.5
    for seconds in (0.002, 0.004, 0.2, 45.0):
        relay.observe_ack_latency(seconds)
    server = served(filter_stats=FilterStats(), relay_stats=relay)

    families = scrape(server.url)

    def value(family: str, suffix: str = "", **labels) -> float:
        return samples(families, family, suffix)[tuple(sorted(labels.items()))]

    assert value("atnorm_connections", "_total") == 5
    assert value("atnorm_connections_active") == 2
    assert value("atnorm_received_bytes", "_total") == 4096
    assert value("atnorm_received_records", "_total") == 30
    assert value("atnorm_handoff_failures", "_total") == 4
    assert value("atnorm_frames", "_total", mode="packed_forward") == 9
    assert value("atnorm_frames", "_total", mode="message") == 0
    assert value("atnorm_protocol_errors", "_total", kind="malformed") == 3
    assert value("atnorm_acks_sent", "_total") == 9
    assert value("atnorm_duplicate_chunks", "_total") == 1
    assert value("atnorm_sent_bytes", "_total") == 2048
    assert value("atnorm_sent_chunks", "_total") == 8
    assert value("atnorm_retries", "_total") == 2
    assert value("atnorm_failovers", "_total") == 1
    assert value("atnorm_spool_depth_records") == 120
    assert value("atnorm_spool_oldest_age_seconds") == 42.5

    latency = "atnorm_downstream_ack_latency_seconds"
    assert families[latency].type == "histogram"
    buckets = {dict(k)["le"]: v for k, v in samples(families, latency, "_bucket").items()}
    assert buckets["0.001"] == 0
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 2
    assert buckets["0.25"] == 3
    assert buckets["30.0"] == 3
    assert buckets["+Inf"] == 4 == value(latency, "_count")
    assert value(latency, "_sum") == pytest.approx(45.206)
    ordered = [buckets[le] for le in sorted(buckets, key=float)]
    assert ordered == sorted(ordered)


def test_build_info_and_schema_count_are_exported(served):
    import atnorm
    from atnorm.version import compiled_modules

    server = served(filter_stats=FilterStats(), schemas_loaded=lambda: 2)
    families = scrape(server.url)
    compiled = "true" if compiled_modules() else "false"
    assert samples(families, "atnorm_build_info") == {(("compiled", compiled), ("version", atnorm.__version__)): 1.0}
    assert samples(families, "atnorm_schemas_loaded") == {(): 2.0}


def test_config_reloads_are_counted_by_result(served):
    answers = iter([FilterSettings(), ConfigError("not valid YAML", file="tuning.yaml", line=3),
                    FilterSettings()])

    def make_settings() -> FilterSettings:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    holder = ReloadingFilter(make_settings, log=lambda line: None)
    server = served(filter_stats=holder.stats, reload_counts=holder)

    def reload_state() -> Tuple[Dict[str, float], float]:
        families = scrape(server.url)
        by_result = {dict(k)["result"]: v
                     for k, v in samples(families, "atnorm_config_reloads", "_total").items()}
        return by_result, samples(families, "atnorm_config_last_reload_successful")[()]

    assert reload_state() == ({"success": 0, "failure": 0}, 1)
    assert holder.reload() is False
    assert reload_state() == ({"success": 0, "failure": 1}, 0)
    assert holder.reload() is True
    assert reload_state() == ({"success": 1, "failure": 1}, 1)


# ---------------------------------------------------------------------------------------
# Health, readiness, serving


def test_healthz_answers_and_readyz_follows_the_readiness_check(served):
    state = {"answer": (False, "schemas not loaded")}
    server = served(filter_stats=FilterStats(), readiness=lambda: state["answer"])
    assert server.port > 0

    assert http_status(server.url + "/healthz") == (200, "ok\n")
    assert http_status(server.url + "/readyz") == (503, "schemas not loaded\n")
    state["answer"] = True
    assert http_status(server.url + "/readyz") == (200, "ready\n")
    state["answer"] = False
    assert http_status(server.url + "/readyz") == (503, "not ready\n")


def test_a_failing_readiness_check_reports_not_ready_instead_of_breaking(served):
    def broken() -> bool:
        raise OSError("spool directory vanished")

    server = served(filter_stats=FilterStats(), readiness=broken)
    status, body = http_status(server.url + "/readyz")
    assert status == 503
    assert "spool directory vanished" in body
    assert http_status(server.url + "/healthz")[0] == 200


def test_unknown_paths_get_404_and_metrics_has_the_exposition_content_type(served):
    server = served(filter_stats=FilterStats())
    assert http_status(server.url + "/nope")[0] == 404
    with urllib.request.urlopen(server.url + "/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_a_busy_port_is_a_one_line_config_error(served):
    first = served(filter_stats=FilterStats())
    second = MetricsServer(build_registry(FilterStats()), "127.0.0.1", first.port)
    with pytest.raises(ConfigError, match=r"metrics endpoint: cannot listen on 127\.0\.0\.1:\d+"):
        second.start()


@pytest.mark.parametrize("address, message", [
    (("unix:///run/atnorm.sock", 0), "unix sockets are not served"),
    (("no-such-host.invalid", 0), "cannot resolve"),
])
def test_an_address_that_cannot_serve_is_a_config_error(address, message):
    with pytest.raises(ConfigError, match=message):
        start_metrics_server(address, filter_stats=FilterStats())


def test_stop_releases_the_port():
    server = MetricsServer(build_registry(FilterStats()), "127.0.0.1", 0).start()
    port = server.port
    server.stop()
    again = MetricsServer(build_registry(FilterStats()), "127.0.0.1", port).start()
    try:
        assert http_status(again.url + "/healthz")[0] == 200
    finally:
        again.stop()


# ---------------------------------------------------------------------------------------
# Stats records


def test_stats_record_holds_the_same_counts_as_the_filter():
    event_filter = EventFilter.from_schemas()
    sent = send_mix(event_filter)
    record = build_stats_record(event_filter.stats, RelayStats(), timestamp=1714557600.25)

    assert record["time"] == "2024-05-01T10:00:00.250+0000"
    assert record["received"] == sum(len(v) for v in sent.values())
    assert (record["accepted"], record["rejected"], record["passed"]) == (12, 6, 4)
    assert record["accepted"] + record["rejected"] + record["passed"] == record["received"]
    assert record["relay"]["downstream_ack_latency"]["count"] == 0
    json.dumps(record)  # JSON-ready as it is


def test_stats_recorder_states_growth_since_the_previous_record():
    event_filter = EventFilter.from_schemas()
    emitted: List[Tuple[str, float, dict]] = []
    ticks = iter([1000.0, 1060.0])
    recorder = StatsRecorder(event_filter.stats, lambda *args: emitted.append(args),
                             tag="audit.stats", clock=lambda: next(ticks))
    for _ in range(3):
        event_filter.process(vmware_event())
    recorder.emit_once()
    event_filter.process(platform_log())
    recorder.emit_once()

    (tag1, time1, first), (tag2, time2, second) = emitted
    assert (tag1, time1, tag2, time2) == ("audit.stats", 1000.0, "audit.stats", 1060.0)
    assert first["since_last"]["accepted"] == 3 and first["since_last"]["seconds"] is None
    assert second["received"] == 4
    assert second["since_last"] == {"received": 1, "accepted": 0, "rejected": 0, "passed": 1,
                                    "warnings": second["warnings"] - first["warnings"],
                                    "seconds": 60.0}


def test_stats_thread_emits_repeatedly_and_survives_a_failing_emit():
    event_filter = EventFilter.from_schemas()
    event_filter.process(vmware_event())
    calls: List[dict] = []
    enough = threading.Event()

    def emit(tag: str, timestamp: float, record: dict) -> None:
        calls.append(record)
        if len(calls) == 1:
            raise BrokenPipeError("reader went away")
        if len(calls) >= 3:
            enough.set()

    timer = StatsThread(StatsRecorder(event_filter.stats, emit), interval=0.01).start()
    assert enough.wait(30)
    timer.stop(emit_final=True)
    count = len(calls)
    assert count >= 4  # three ticks, the first failing, then the final record
    assert all(record["accepted"] == 1 for record in calls)


def test_stats_task_runs_on_the_asyncio_loop_and_awaits_async_emit():
    event_filter = EventFilter.from_schemas()
    event_filter.process(platform_log())

    async def main() -> List[Tuple[str, dict]]:
        queue: asyncio.Queue = asyncio.Queue()

        async def emit(tag: str, timestamp: float, record: dict) -> None:
            await queue.put((tag, record))

        recorder = StatsRecorder(event_filter.stats, emit)
        task = recorder.start_task(0.01)
        got = [await asyncio.wait_for(queue.get(), 30) for _ in range(2)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    got = asyncio.run(main())
    assert [tag for tag, _ in got] == ["atnorm.stats", "atnorm.stats"]
    assert got[1][1]["passed"] == 1


# ---------------------------------------------------------------------------------------
# Dashboard and alert rules agree with what the endpoint exports


def exported_sample_names() -> set:
    """Every sample name a fully populated endpoint can export, from a real scrape."""
    holder = ReloadingFilter(FilterSettings, log=lambda line: None)
    server = start_metrics_server(("127.0.0.1", 0), filter_stats=holder.stats, relay_stats=RelayStats(),
                                  schemas_loaded=lambda: 2, reload_counts=holder)
    try:
        families = scrape(server.url)
    finally:
        server.stop()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {family.name + suffix for family in families.values()
            for suffix in suffixes.get(family.type, ("",))}


METRIC_NAME = re.compile(r"\b(atnorm_[a-z0-9_]+)")


def load_alert_rules() -> List[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_targets() -> List[Tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_alert_rules_are_complete_and_use_exported_metrics():
    exported = exported_sample_names()
    rules = load_alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {"AtnormRelayDown", "AtnormNoRecordsReceived", "AtnormHighRejectionRatio",
            "AtnormSpoolGrowing", "AtnormSpoolOldestAgeHigh", "AtnormProtocolErrors"} <= names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)
    by_name = {rule["alert"]: rule for rule in rules}
    assert "up" in by_name["AtnormRelayDown"]["expr"]
    assert by_name["AtnormHighRejectionRatio"]["for"] == "10m"
    assert "service" in by_name["AtnormHighRejectionRatio"]["expr"]


def test_dashboard_panels_query_exported_metrics():
    exported = exported_sample_names()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Records by outcome", "Rejection ratio by service", "Top rejection rules",
            "Warnings by kind", "Unknown actions", "Spool depth and oldest age",
            "Protocol errors by kind", "Downstream ack latency", "Connections"} <= titles
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    targets = dashboard_targets()
    covered = set()
    for title, expr in targets:
        used = set(METRIC_NAME.findall(expr))
        assert used or expr.startswith("sum(up{"), title
        assert used <= exported, (title, used - exported)
        covered |= used
    latency = [expr for title, expr in targets if title == "Downstream ack latency"]
    assert any("histogram_quantile(0.99" in e for e in latency)
    assert any("histogram_quantile(0.5" in e for e in latency)
    # Every atnorm family is shown somewhere (build info only feeds the variables).
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    families = {family(name) for name in exported if name.startswith("atnorm_")}
    shown = {family(name) for name in covered}
    assert families - shown <= {"atnorm_build_info", "atnorm_spool_depth_bytes"}


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_accepts_alerts_and_dashboard_queries(tmp_path):
    checked = subprocess.run([PROMTOOL, "check", "rules", str(MONITORING / "alerts.yaml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Grafana variables replaced by what Grafana would send; each query becomes a
    # recording rule so promtool parses it.
    def concrete(expr: str) -> str:
        return (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                .replace('"$job"', '".*"').replace('"$instance"', '".*"'))

    rules = [{"record": f"atnorm:dashboard_query_{i}", "expr": concrete(expr)}
             for i, (_, expr) in enumerate(dashboard_targets())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
def test_promtool_fires_the_rejection_and_relay_down_alerts_on_matching_series(tmp_path):
    rules_path = tmp_path / "alerts.yaml"
    shutil.copy(MONITORING / "alerts.yaml", rules_path)
    base = 'atnorm_records_total{job="atnorm", instance="relay-1:9467", '
    annotations = {rule["alert"]: rule["annotations"] for rule in load_alert_rules()}
    annotations["AtnormHighRejectionRatio"] = {
        "description": annotations["AtnormHighRejectionRatio"]["description"].replace(
            "{{ $labels.service }}", "audit-log")}
    test = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # vsi: 20% rejected; vmware: none rejected
                {"series": base + 'outcome="accepted", service="audit-log"}', "values": "0+240x30"},
                {"series": base + 'outcome="rejected", service="audit-log"}', "values": "0+60x30"},
                {"series": base + 'outcome="accepted", service="vmware-solutions"}', "values": "0+300x30"},
                {"series": base + 'outcome="rejected", service="vmware-solutions"}', "values": "0+0x30"},
                {"series": 'up{job="atnorm", instance="relay-1:9467"}', "values": "1x10 0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "AtnormHighRejectionRatio", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "atnorm", "service": "audit-log"},
                    "exp_annotations": {**annotations["AtnormHighRejectionRatio"],
                                        "summary": "20% of audit-log events are rejected"},
                }]},
                {"eval_time": "5m", "alertname": "AtnormHighRejectionRatio", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "AtnormRelayDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "job": "atnorm", "instance": "relay-1:9467"},
                    "exp_annotations": {
                        "summary": "atnorm on relay-1:9467 is not answering scrapes",
                        "description": annotations["AtnormRelayDown"]["description"].replace(
                            "{{ $labels.instance }}", "relay-1:9467"),
                    },
                }]},
                {"eval_time": "5m", "alertname": "AtnormRelayDown", "exp_alerts": []},
            ],
        }],
    }
    test_path = tmp_path / "alerts-test.yaml"
    test_path.write_text(yaml.safe_dump(test))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def alert_unit_tests() -> List[dict]:
    return [case for test in yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
            for case in test["alert_rule_test"]]


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet():
    alerts = {rule["alert"] for rule in load_alert_rules()}
    cases = alert_unit_tests()
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fired == alerts
    # ConfigReloadFailed's quiet case is relay-2 in the same test: a reload failure fixed in time.
    assert alerts - quiet == {"AtnormConfigReloadFailed"}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_the_shipped_alert_unit_tests_pass_promtool():
    result = subprocess.run([PROMTOOL, "test", "rules", str(MONITORING / "alerts.test.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
