"""An event unwrapped from `log` / `message` / `line` / `payload` keeps the envelope's other fields."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from atnorm.core.pipeline import EventFilter, FilterSettings
from support import load_event

KUBERNETES = {"pod_name": "audit-7f9c", "namespace_name": "audit", "labels": {"app": "at"}}


def kubernetes_record(event: Dict[str, Any]) -> Dict[str, Any]:
    """What Fluent Bit's tail + kubernetes filter make of a container's JSON log line."""
    return {"log": json.dumps(event), "stream": "stdout", "time": "2024-05-01T10:00:00.1Z",
            "kubernetes": KUBERNETES}


def decide(record: Dict[str, Any], **settings: Any):
    return EventFilter.from_schemas(settings=FilterSettings(**settings)).process(record)


def test_kubernetes_fields_stay_beside_the_unwrapped_event_by_default(shared_filter):
    event = load_event("vsi-provision.json")
    verdict = shared_filter.process(kubernetes_record(event))
    assert verdict.outcome == "accepted"
    assert verdict.record["kubernetes"] == KUBERNETES
    assert verdict.record["stream"] == "stdout"
    assert verdict.record["time"] == "2024-05-01T10:00:00.1Z"
    assert "log" not in verdict.record  # the wrapper field itself became the event
    assert verdict.record["action"] == event["action"]
    assert "wrapper" in verdict.fixes and "wrapper" in verdict.record["atnorm"]["fixes"]


@pytest.mark.parametrize("field", ["message", "line"])
def test_every_unwrapped_field_keeps_its_neighbours(shared_filter, field):
    event = load_event("vsi-provision.json")
    value = event if field == "line" else json.dumps(event)
    verdict = shared_filter.process({field: value, "host": "node-1"})
    assert verdict.outcome == "accepted" and f"unwrap:{field}" in verdict.fixes
    assert verdict.record["host"] == "node-1"


def test_nest_puts_the_envelope_fields_under_the_wrapper_key():
    verdict = decide(kubernetes_record(load_event("vsi-provision.json")),
                     wrapper_fields="nest", wrapper_key="source")
    assert verdict.record["source"] == {"stream": "stdout", "time": "2024-05-01T10:00:00.1Z",
                                        "kubernetes": KUBERNETES}
    assert "kubernetes" not in verdict.record


def test_drop_keeps_only_the_event():
    event = load_event("vsi-provision.json")
    verdict = decide(kubernetes_record(event), wrapper_fields="drop")
    assert verdict.outcome == "accepted"
    assert "kubernetes" not in verdict.record and "wrapper" not in verdict.fixes


@pytest.mark.parametrize("clash, top, kept", [("event", "event text", "wrapper text"),
                                              ("wrapper", "wrapper text", "event text")])
def test_on_a_name_clash_one_value_keeps_the_name_and_the_other_is_kept_aside(clash, top, kept):
    event = load_event("vsi-provision.json")
    event["host"] = "event text"
    verdict = decide({"log": json.dumps(event), "host": "wrapper text"}, wrapper_clash=clash)
    assert verdict.record["host"] == top
    assert verdict.record["wrapper"] == {"host": kept}


def test_a_payload_field_the_envelope_also_holds_is_not_lost(shared_filter):
    record = load_event("pcloud-legacy-payload.json")
    payload = record["payload"] if isinstance(record["payload"], dict) else json.loads(record["payload"])
    record["payload"] = dict(payload, meta={"inner": True})
    record["meta"] = {"outer": True}
    verdict = shared_filter.process(record)
    assert verdict.outcome == "accepted"
    assert verdict.record["meta"] == {"inner": True}
    assert verdict.record["wrapper"] == {"meta": {"outer": True}}


def test_the_event_own_field_named_like_the_wrapper_key_is_never_replaced():
    event = load_event("vsi-provision.json")
    event["wrapper"] = "the event's"
    event["stream"] = "event stream"
    verdict = decide({"log": json.dumps(event), "stream": "stdout"})
    assert verdict.record["wrapper"] == "the event's"
    assert verdict.record["_wrapper"] == {"stream": "stdout"}


def test_rejected_records_keep_the_whole_original():
    event = load_event("vsi-provision.json")
    del event["outcome"]
    record = kubernetes_record(event)
    verdict = decide(record)
    assert verdict.outcome == "rejected" and verdict.record == record


def test_the_options_reach_the_filter_from_the_command_line(tmp_path):
    import argparse

    from atnorm.config.options import ConfigError
    from atnorm.core.settings import add_filter_arguments, filter_settings, resolve_filter_options

    parser = argparse.ArgumentParser()
    add_filter_arguments(parser)
    options = resolve_filter_options(parser.parse_args(["--wrapper-fields", "nest", "--wrapper-key", "k8s",
                                                     "--wrapper-clash", "wrapper"]))
    settings = filter_settings(options)
    assert (settings.wrapper_fields, settings.wrapper_key, settings.wrapper_clash) == ("nest", "k8s", "wrapper")
    with pytest.raises(ConfigError, match="expected one of merge, nest, drop"):
        resolve_filter_options(parser.parse_args(["--wrapper-fields", "keep"]))
