"""exec-filter, JSON in and out: reusing the filter's JSON line must write what writing the
output record again writes.

12,000+ JSON lines (generated events, a fifth of them mutated, then given tag and time keys
of every kind: text, empty, missing, numbers, NaN, maps; bodies with NaN, big integers,
escaped lone surrogates, non-ASCII text, deep nesting; lines that are not objects or not
JSON) go through two exec-filter routers under several key settings: the one the child
runs (`json_out`: the filter decides the decoded record with `process_decoded_json` and an
accepted or passed record leaves as its JSON line with the transport keys appended) and
the reference (`record`: `process` on the decoded record, the output written by the
writer). Same bytes out, batch by batch, same outcomes and counts. With msgpack out, the
same for an accepted or passed record packed by msgspec against the writer's packing.
"""

import json
import random

import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.pipeline import EventFilter
from atnorm.execfilter.shaping import EncodedOutput, PackedOutput, RecordRouter
from atnorm.execfilter.writers import OutputEncoder
from atnorm.model.jsoncodec import loads

LINES = 12_000
BATCH = 50

TAGS = ["audit.at", "", "é.tag", "x\ud800", 7, None, ["x"], {"t": 1}]
TIMES = ["2025-01-02T03:04:05Z", 1735787045, 1735787045.25, "NaN", {"t": 1}, None, "x" * 40, "\udcff"]
BODIES = ['"NaN"', "NaN", "1e400", str(1 << 70), '"\\ud800"', '"é中😀\\u2028"', "[" * 40 + "1" + "]" * 40, "-0.0"]


def _lines():
    event_filter = EventFilter.from_schemas()
    rng = random.Random(20261202)
    out = []
    for record in EventGenerator(event_filter.rules, seed=11).mix(LINES, invalid_ratio=0.2):
        text = json.dumps(record, ensure_ascii=rng.random() < 0.3)
        extra = []
        if rng.random() < 0.9:
            extra.append('"tag":' + json.dumps(rng.choice(TAGS)))
        if rng.random() < 0.6:
            time = rng.choice(TIMES)
            extra.append('"time":' + (time if time == "NaN" else json.dumps(time)))
        if rng.random() < 0.15:
            extra.append('"body":' + rng.choice(BODIES))
        if rng.random() < 0.05:
            extra.append('"atnorm":{"mine":1}')
        if extra:
            text = text[:-1] + ("," if len(text) > 2 else "") + ",".join(extra) + "}"
        pick = rng.random()
        if pick < 0.01:
            text = rng.choice(["[1,2]", '"text"', "null", "{", "{]", '{"tag":"a"', ""])
        elif pick < 0.02:
            text = json.dumps({"tag": "only.transport", "time": 1})
        out.append(text.encode("utf-8", "surrogatepass"))
    return out


@pytest.fixture(scope="module")
def lines():
    return _lines()


def _reference_output(router, line):
    """What the exec-filter wrote before reusing lines: `record` on the decoded line when it
    has transport keys and decodes, else `json_line` (which then asks `process_json`)."""
    if router._transport_keys and len(line) <= router.max_record_bytes:
        try:
            record = loads(line)
        except (ValueError, RecursionError):
            pass
        else:
            return router.record(record)
    return router.json_line(line)


def _outputs_against_the_reference(lines, tag_key, time_key, out_format, reused_type):
    """Both routers over `lines` batch by batch (ours reusing the filter's output for
    `out_format`): the same outcomes and bytes out, the same counts at the end. Returns how
    many outputs left as `reused_type`."""
    ours_filter, reference_filter = EventFilter.from_schemas(), EventFilter.from_schemas()
    ours = RecordRouter(ours_filter, tag_key=tag_key, time_key=time_key, json_out=out_format == "json",
                        msgpack_out=out_format == "msgpack")
    reference = RecordRouter(reference_filter, tag_key=tag_key, time_key=time_key)
    ours_out, reference_out = OutputEncoder(ours, out_format), OutputEncoder(reference, out_format)
    reused = 0
    for start in range(0, len(lines), BATCH):
        batch = lines[start:start + BATCH]
        outputs = [ours.json_line(line) for line in batch]
        reused += sum(type(output) is reused_type for output in outputs)
        expected = [_reference_output(reference, line) for line in batch]
        assert ours._outcomes == reference._outcomes
        assert ours_out(outputs) == reference_out(expected)
    assert ours_filter.stats.snapshot() == reference_filter.stats.snapshot()
    return reused


# (tag key, time key, how many outputs leave as the filter's line): never with both keys
# one; with the time key the filter's annotation key, only for records it does not annotate.
@pytest.mark.parametrize("tag_key, time_key, reuse", [
    ("tag", None, "most"), ("tag", "time", "most"), (None, None, "most"), (None, "time", "most"),
    ("tag", "tag", "none"), ("tag", "atnorm", "few")])
def test_reused_lines_are_the_bytes_the_writer_writes(lines, tag_key, time_key, reuse):
    assert len(lines) >= 10_000
    reused = _outputs_against_the_reference(lines, tag_key, time_key, "json", EncodedOutput)
    if reuse == "most":
        assert reused > len(lines) // 2
    elif reuse == "few":
        assert 0 < reused < len(lines) // 10
    else:
        assert reused == 0


# With msgpack out, an accepted or passed record read from JSON leaves packed by msgspec,
# the transport keys on it, whatever the keys are.
@pytest.mark.parametrize("tag_key, time_key", [("tag", None), ("tag", "time"), (None, None), ("tag", "tag"),
                                               ("tag", "atnorm")])
def test_records_read_from_json_are_packed_as_the_writer_packs_them(lines, tag_key, time_key):
    packed = _outputs_against_the_reference(lines, tag_key, time_key, "msgpack", PackedOutput)
    assert packed > len(lines) // 2


def test_a_key_the_output_has_already_is_put_in_its_place():
    # The annotation key is added by the filter: a time key of that name stays where it is.
    router = RecordRouter(EventFilter.from_schemas(), tag_key="tag", time_key="atnorm", json_out=True)
    reference = RecordRouter(EventFilter.from_schemas(), tag_key="tag", time_key="atnorm")
    line = json.dumps({**EventGenerator(EventFilter.from_schemas().rules, seed=1).mix(1, 0.0)[0],
                       "tag": "a", "atnorm": "x"}).encode()
    output = router.json_line(line)
    assert type(output) is dict
    assert OutputEncoder(router, "json")([output]) == OutputEncoder(reference, "json")([reference.json_line(line)])
