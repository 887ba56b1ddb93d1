"""Poison records: whatever fails while deciding one record makes it a rejection, never a crash.

Each record here broke `EventFilter.process` / `atnorm filter` (an exception out of the
filter, a traceback and an unfinished file, or a line no JSON parser takes). Now each one
is decided (a rejection with a reason) and counted once, and what goes out encodes as
strict JSON and as msgpack.
"""

import copy
import json
import math
import subprocess
import sys

import msgpack
import pytest

from atnorm.forward.codec import packb
from atnorm.model.jsoncodec import MAX_NESTING
from support import load_event

ATNORM = [sys.executable, "-m", "atnorm"]


def event(**changes):
    record = load_event("vsi-provision.json")
    record.update(changes)
    return record


def with_reason_code(code):
    record = event()
    record["reason"] = dict(record.get("reason", {}), reasonCode=code)
    return record


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def initiator_named(value):
    record = event()
    record["initiator"] = dict(record["initiator"], name=value)
    return record


def reject(value):
    raise ValueError(f"not strict JSON: {value}")


def strict_json_line(line):
    """Parse one output line the way a strict consumer does: no NaN/Infinity, valid UTF-8."""
    line.encode("utf-8")
    return json.loads(line, parse_constant=reject)


def assert_encodable(verdict):
    out = verdict.output()
    json.dumps(out, allow_nan=False, ensure_ascii=False).encode("utf-8")
    msgpack.packb(out, use_bin_type=True)  # strict UTF-8 and 64-bit integers
    packb(out)


# name → record; each made EventFilter.process raise (or its verdict unwritable) before.
POISON = {
    "eventTime-int-320-digits": lambda: event(eventTime=int("9" * 320)),
    "eventTime-year-1-east-of-utc": lambda: event(eventTime="0001-01-01T00:00:00+01:00"),
    "eventTime-year-9999-west-of-utc": lambda: event(eventTime="9999-12-31T23:59:59-01:00"),
    "eventTime-infinite": lambda: event(eventTime=math.inf),
    "reasonCode-superscript-two": lambda: with_reason_code("²"),
    "reasonCode-4301-digits": lambda: with_reason_code("7" * 4301),
    "reasonCode-2**64-after-coercion": lambda: with_reason_code(str(2 ** 64)),
    "initiator-name-nested-past-recursion-limit": lambda: initiator_named(nested(sys.getrecursionlimit() + 50)),
    "log-json-nested-past-recursion-limit": lambda: {
        "log": '{"a":' * (sys.getrecursionlimit() + 50) + "1" + "}" * (sys.getrecursionlimit() + 50)},
    "non-string-key": lambda: dict(event(), **{"requestData": {1: "one", "x.y": 2}}),
    "non-string-key-top": lambda: {1: "x", "action": "a.b.c", "initiator": {}},
    "lone-surrogate": lambda: event(message="caf\ud800"),
    "lone-surrogate-in-key": lambda: dict(event(), **{"x\ud800y": 1}),
    "surrogateescaped-byte": lambda: event(message="caf\udcc3"),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_poison_record_is_rejected_with_a_reason_and_counted_once(fresh_filter, name):
    record = POISON[name]()
    verdict = fresh_filter.process(record)
    assert verdict.outcome == "rejected", (name, verdict.outcome)
    assert verdict.reasons and all(r.rule and r.message for r in verdict.reasons)
    assert_encodable(verdict)
    assert fresh_filter.stats.received == 1 and fresh_filter.stats.outcomes["rejected"] == 1


@pytest.mark.parametrize("depth", [MAX_NESTING, sys.getrecursionlimit() + 50, 200_000])
def test_nesting_past_the_bound_is_rejected_before_any_decision_however_deep(fresh_filter, depth):
    # Deeper than Python's recursion limit, and deep enough to overflow the C stack of a
    # walk that recursed without a bound (the compiled modules' would).
    verdict = fresh_filter.process(initiator_named(nested(depth)))
    assert [(r.rule, r.message) for r in verdict.reasons] == [
        ("record.encoding", f"nesting deeper than {MAX_NESTING} levels")]
    assert verdict.reasons[0].path == "/initiator/name" + "/a" * (MAX_NESTING - 2)
    assert fresh_filter.stats.rejections[("record.encoding", "")] == 1
    assert_encodable(verdict)


def test_nesting_up_to_the_bound_is_decided_as_any_record(fresh_filter):
    record = dict(event(), extra=nested(MAX_NESTING - 1))  # the record is the first level
    verdict = fresh_filter.process(record)
    # Valid, but deeper than the encoders go: it cannot be sent on as it is.
    assert [r.rule for r in verdict.reasons] == ["record.encoding"]
    assert "nesting deeper than 100 levels cannot be sent on" in verdict.reasons[0].message


def test_deep_json_in_log_is_internal_error_not_an_exception(fresh_filter):
    depth = sys.getrecursionlimit() + 50
    verdict = fresh_filter.process({"log": '{"a":' * depth + "1" + "}" * depth, "stream": "stdout"})
    assert [r.rule for r in verdict.reasons] == ["internal.error"]
    assert verdict.reasons[0].message.startswith("the filter failed on this record: RecursionError")


def test_process_json_keeps_the_same_promise(fresh_filter):
    lines = [json.dumps(event(eventTime=int("9" * 320))), '{"message": "\\ud800", "action": "a.b.c"}',
             json.dumps(with_reason_code("²"))]
    verdicts = [fresh_filter.process_json(line) for line in lines]
    assert [v.outcome for v in verdicts] == ["rejected"] * 3
    assert verdicts[1].reasons[0].rule == "record.encoding" and verdicts[1].reasons[0].path == "/message"
    assert fresh_filter.stats.received == 3
    for verdict in verdicts:
        assert_encodable(verdict)


def test_the_reasons_of_these_rejections_read_as_before(shared_filter):
    verdict = shared_filter.process(with_reason_code("²"))
    assert [(r.path, r.rule, r.message) for r in verdict.reasons] == [
        ("/reason/reasonCode", "envelope.types", "'²' is not of type 'integer'")]
    verdict = shared_filter.process(event(eventTime="0001-01-01T00:00:00+01:00"))
    assert verdict.reasons[0].path == "/eventTime"


def test_small_reason_codes_are_still_coerced(shared_filter):
    verdict = shared_filter.process(with_reason_code(" 403 "))
    assert verdict.outcome == "accepted" and verdict.record["reason"]["reasonCode"] == 403
    assert "coerce:/reason/reasonCode" in verdict.fixes


# -- atnorm filter, as a user runs it -------------------------------------------------------

def _poison_lines():
    depth_log = 5000
    deep_initiator = json.dumps(initiator_named("@@")).replace('"@@"', '{"a":' * 985 + "1" + "}" * 985)
    return [
        json.dumps(event(eventTime=int("9" * 320))),
        json.dumps(event(eventTime="0001-01-01T00:00:00+01:00")),
        json.dumps(event(eventTime="9999-12-31T23:59:59-01:00")),
        json.dumps(with_reason_code("²")),
        json.dumps(with_reason_code("7" * 4301)),
        json.dumps({"log": '{"a":' * depth_log + "1" + "}" * depth_log}),
        deep_initiator,
        json.dumps(event(message="\ud800")),
        '{"action": "a.b.c", "initiator": {"id": NaN}, "target": Infinity}',
    ]


def test_filter_command_decides_every_poison_line_and_prints_the_summary(tmp_path):
    good = copy.deepcopy(load_event("vsi-provision.json"))
    lines = _poison_lines() + ['{"msg": NaN, "big": -Infinity}', json.dumps(good)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejected = tmp_path / "rejected.jsonl"
    passed = tmp_path / "passed.jsonl"
    result = subprocess.run(ATNORM + ["filter", str(source), "--rejected", str(rejected), "--passed", str(passed),
                                      "--summary-format", "json"],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in result.stderr
    summary = json.loads(result.stderr.decode().strip().splitlines()[-1])
    assert (summary["received"], summary["accepted"], summary["rejected"], summary["passed"]) == (11, 1, 10, 0)
    dead = [strict_json_line(line) for line in rejected.read_text(encoding="utf-8").splitlines()]
    assert len(dead) == 10 and all(d["reasons"] for d in dead)
    # A record that would pass but holds what strict JSON cannot carry is not changed on
    # its way through: it is rejected, its original spelled out.
    assert dead[-1]["original"] == {"msg": "NaN", "big": "-Infinity"}
    assert dead[-1]["reasons"][0]["rule"] == "record.encoding"
    assert passed.read_text(encoding="utf-8") == ""
    accepted = [strict_json_line(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["action"] for r in accepted] == [good["action"]]


def test_dead_letter_lines_are_strict_json(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"action": "a.b.c", "initiator": {"id": NaN}}\n'
                      '{"action": "a.b.c", "initiator": {"name": "\\udcff\\ud800"}, "target": {}}\n',
                      encoding="utf-8")
    rejected = tmp_path / "rejected.jsonl"
    result = subprocess.run(ATNORM + ["filter", str(source), "--rejected", str(rejected)],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    raw = rejected.read_bytes()
    assert b"NaN" not in raw.replace(b'"NaN"', b"")
    first, second = [strict_json_line(line) for line in raw.decode("utf-8").splitlines()]
    assert first["original"]["initiator"]["id"] == "NaN"
    assert second["reasons"][0]["rule"] == "record.encoding"
    assert second["original"]["initiator"]["name"] == "\\xff\\ud800"


def test_process_json_given_text_with_a_raw_lone_surrogate_rejects_it(fresh_filter):
    record = event(message="x")
    line = json.dumps(record, ensure_ascii=False).replace('"message": "x"', '"message": "x\ud800"')
    verdict = fresh_filter.process_json(line)
    assert [(r.path, r.rule) for r in verdict.reasons] == [("/message", "record.encoding")]
    assert_encodable(verdict)


def test_json_unwrapped_from_a_string_goes_downstream_as_msgpack(shared_filter):
    from atnorm.forward.codec import Entry, pack_entries
    from atnorm.relay.routing import Router

    inner = event()
    inner["requestData"] = {"n": 1}
    text = json.dumps(inner).replace('"n": 1', '"n": 123456789012345678901234567890')
    entries = [Entry(1700000000, {"log": text}),
               Entry(1700000000, {"requestData": text.replace('{"n"', '{"m"'), **event()})]
    for batch in Router(shared_filter.process).route("audit.at", entries):
        pack_entries(batch.entries)  # an integer past 64 bits raised OverflowError here
    verdict = shared_filter.process({"log": text})
    assert verdict.record["requestData"]["n"] == "123456789012345678901234567890"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_line_nested_past_the_bound_gets_the_reason_its_record_gets(fresh_filter, as_bytes):
    # Read from JSON text, a record skips the text check when nothing in the text can need
    # it; nesting past the bound is such a thing, so the reason is the one `process` gives.
    record = dict(event(), extra=nested(MAX_NESTING))
    line = json.dumps(record)
    from_line = fresh_filter.process_json(line.encode() if as_bytes else line)
    from_record = fresh_filter.process(record)
    assert from_line.reasons == from_record.reasons
    assert [(r.rule, r.message) for r in from_line.reasons] == [
        ("record.encoding", f"nesting deeper than {MAX_NESTING} levels")]
