"""`atnorm exec-filter` driven as Fluentd's out_exec_filter drives it: a real child process,
records written to its stdin in chunks that split lines and msgpack objects anywhere,
outputs read back from its stdout and reconciled with the inputs one for one."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack
import pytest

from atnorm import cli
from atnorm.execfilter.readers import READ_SIZE, resync_offset

FIXTURES = Path(__file__).parent / "fixtures" / "execfilter"
CONF = Path(__file__).resolve().parents[1] / "conf" / "fluentd" / "exec-filter.conf"
RECORDS: Dict[str, List[Dict[str, Any]]] = json.loads(
    (FIXTURES / "records.json").read_text(encoding="utf-8"))

# Lines that are not records: (bytes written, what the dead letter's original must be).
MALFORMED_LINES = [
    (b'{"tag": "app.cut", "action": "vmware-solutions.vcs.cre', None),  # cut-off JSON
    (b"\xff\xfe not text at all", None),                                  # invalid UTF-8
    (b"[1, 2, 3]", [1, 2, 3]),                                            # JSON, not an object
    (b'"a bare string"', "a bare string"),
]
# Bytes that can never start a record (0xc1 is never used by msgpack).
GARBAGE = b"\xc1\xc1\x00\xc1\x07\xc1"


def exec_filter_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "atnorm", "exec-filter", *args]


# --- building input streams -------------------------------------------------------------

class Item:
    """One input unit and the output it must produce."""

    def __init__(self, kind: str, tag: Optional[str], record: Any = None,
                 raw: Optional[bytes] = None, original: Any = None) -> None:
        self.kind, self.tag, self.record, self.raw, self.original = kind, tag, record, raw, original


def mixed_items(count: int, seed: int, malformed: Sequence[Tuple[bytes, Any]] = ()) -> List[Item]:
    """`count` records, each with its own tag, cycling through the fixture kinds, with a
    malformed unit every 37th place."""
    rng = random.Random(seed)
    kinds = [(kind, record) for kind in ("accepted", "rejected", "passed")
             for record in RECORDS[kind]]
    items: List[Item] = []
    for index in range(count):
        if malformed and index % 37 == 36:
            raw, original = malformed[(index // 37) % len(malformed)]
            items.append(Item("malformed", None, raw=raw, original=original))
            continue
        kind, record = rng.choice(kinds)
        items.append(Item(kind, f"app.{index}", copy.deepcopy(record)))
    return items


def tagged(item: Item) -> Dict[str, Any]:
    return {**item.record, "tag": item.tag}


def json_stream(items: Sequence[Item]) -> bytes:
    return b"".join((item.raw if item.kind == "malformed" else
                     json.dumps(tagged(item)).encode("utf-8")) + b"\n" for item in items)


def msgpack_stream(items: Sequence[Item]) -> bytes:
    return b"".join(item.raw if item.kind == "malformed" else msgpack.packb(tagged(item))
                    for item in items)


def random_chunks(data: bytes, seed: int, largest: int = 900) -> List[bytes]:
    rng = random.Random(seed)
    chunks, position = [], 0
    while position < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[position:position + size])
        position += size
    return chunks


# --- driving the child ------------------------------------------------------------------

class Child:
    """A running `atnorm exec-filter`; stderr goes to a file so it can be checked."""

    def __init__(self, tmp_path: Path, *args: str, stdin: Any = subprocess.PIPE) -> None:
        self.stderr_path = tmp_path / "stderr.txt"
        self.log_path = tmp_path / "exec-filter.log"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                exec_filter_command(*args, "--log-file", str(self.log_path)),
                stdin=stdin, stdout=subprocess.PIPE, stderr=stderr)

    def write(self, data: bytes) -> None:
        """One write(2) on the pipe, like one flush of Fluentd's buffer chunk."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.proc.stdin.fileno(), view):]

    def feed_in_background(self, chunks: Sequence[bytes]) -> threading.Thread:
        def feed() -> None:
            try:
                for chunk in chunks:
                    self.write(chunk)
            except BrokenPipeError:
                pass
            finally:
                self.proc.stdin.close()

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    def finish(self) -> Tuple[bytes, int]:
        """Everything left on stdout, then the exit status."""
        out = self.proc.stdout.read()
        status = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return out, status

    @property
    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")


def run_child(tmp_path: Path, args: Sequence[str], chunks: Sequence[bytes]) -> Tuple[bytes, Child]:
    child = Child(tmp_path, *args)
    writer = child.feed_in_background(chunks)
    out, status = child.finish()
    writer.join(timeout=60)
    assert status == 0
    assert child.stderr == b"", "the child must keep stderr silent"
    return out, child


def json_outputs(data: bytes) -> List[Dict[str, Any]]:
    """JSON output records; whitespace lines are the padding to Fluentd's read blocks."""
    assert data == b"" or data.endswith(b"\n"), "output must end on a record boundary"
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def read_json_record(stream: Any) -> Dict[str, Any]:
    """The next JSON output record from a running child (skipping padding)."""
    while True:
        line = stream.readline()
        assert line, "stdout closed"
        if line.strip():
            return json.loads(line)


def msgpack_outputs(data: bytes) -> List[Dict[str, Any]]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    outputs = list(unpacker)
    assert unpacker.tell() == len(data), "output must end on a record boundary"
    return outputs


# --- what each output must be -----------------------------------------------------------

def assert_reconciles(items: Sequence[Item], outputs: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """One output per input, in order, each routed and shaped as its kind demands."""
    assert len(outputs) == len(items)
    counts = {"accepted": 0, "rejected": 0, "passed": 0}
    for item, out in zip(items, outputs):
        if item.kind == "accepted":
            assert out["tag"] == item.tag
            assert out["action"] == item.record["action"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", out["eventTime"])
            assert "reasons" not in out
            counts["accepted"] += 1
        elif item.kind == "rejected":
            assert out["tag"] == item.tag + ".rejected"
            assert out["original"] == item.record, "the original must arrive untouched"
            assert_reasons(out)
            counts["rejected"] += 1
        elif item.kind == "passed":
            assert out == tagged(item), "other traffic must pass unchanged"
            counts["passed"] += 1
        else:
            assert out["tag"] == "atnorm.rejected"
            assert_reasons(out)
            if item.original is not None:
                assert out["original"] == item.original
            counts["rejected"] += 1
    return counts


def assert_reasons(out: Dict[str, Any]) -> None:
    assert set(out) == {"original", "reasons", "tag"}
    assert out["reasons"], "a rejection must say why"
    for reason in out["reasons"]:
        assert reason["rule"] and reason["message"] and "path" in reason


def assert_summary(child: Child, counts: Dict[str, int], how: str = "eof") -> None:
    received = sum(counts.values())
    expected = (f"stopped on {how}: received={received} accepted={counts['accepted']} "
                f"rejected={counts['rejected']} passed={counts['passed']} ")
    assert expected in child.log


# --- JSON lines ---------------------------------------------------------------------------

def test_json_lines_in_random_chunks_come_back_one_for_one(tmp_path):
    items = mixed_items(3000, seed=1, malformed=MALFORMED_LINES)
    chunks = random_chunks(json_stream(items), seed=2)
    out, child = run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag"], chunks)
    counts = assert_reconciles(items, json_outputs(out))
    assert all(counts.values())
    assert_summary(child, counts)


def test_json_line_split_across_writes_is_joined_before_filtering(tmp_path):
    first, second = mixed_items(2, seed=3)
    line = json.dumps(tagged(second)).encode("utf-8") + b"\n"
    child = Child(tmp_path, "--out-format", "json", "--tag-key", "tag")
    # A write below PIPE_BUF is atomic: the child reads the whole first record and
    # half of the second together; its output for the first proves that read happened.
    child.write(json.dumps(tagged(first)).encode("utf-8") + b"\n" + line[:len(line) // 2])
    first_out = read_json_record(child.proc.stdout)
    child.write(line[len(line) // 2:])
    child.proc.stdin.close()
    rest, status = child.finish()
    assert status == 0 and child.stderr == b""
    assert_reconciles([first, second], [first_out] + json_outputs(rest))


def test_last_line_without_newline_is_filtered_at_eof(tmp_path):
    items = mixed_items(5, seed=4)
    data = json_stream(items).rstrip(b"\n")
    out, _ = run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag"], [data])
    assert_reconciles(items, json_outputs(out))


def test_without_tag_key_outputs_are_the_verdict_outputs(tmp_path):
    items = mixed_items(60, seed=5, malformed=MALFORMED_LINES)
    data = b"".join((item.raw if item.kind == "malformed" else
                     json.dumps(item.record).encode("utf-8")) + b"\n" for item in items)
    out, _ = run_child(tmp_path, ["--out-format", "json"], random_chunks(data, seed=6))
    outputs = json_outputs(out)
    assert len(outputs) == len(items)
    for item, output in zip(items, outputs):
        assert "tag" not in output
        if item.kind == "passed":
            assert output == item.record
        elif item.kind in ("rejected", "malformed"):
            assert set(output) == {"original", "reasons"}
            if item.kind == "rejected":
                assert output["original"] == item.record


def test_blank_lines_are_not_records(tmp_path):
    items = mixed_items(3, seed=7)
    data = b"\n\n" + json_stream(items).replace(b"\n", b"\n\r\n   \n")
    out, _ = run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag"], [data])
    assert_reconciles(items, json_outputs(out))


# --- msgpack ------------------------------------------------------------------------------

def test_msgpack_stream_split_anywhere_comes_back_one_for_one(tmp_path):
    items = mixed_items(3000, seed=8)
    chunks = random_chunks(msgpack_stream(items), seed=9)
    out, child = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"], chunks)
    counts = assert_reconciles(items, msgpack_outputs(out))
    assert_summary(child, counts)


def test_msgpack_object_split_across_writes_is_joined_before_filtering(tmp_path):
    first, second = mixed_items(2, seed=10)
    packed = msgpack.packb(tagged(second))
    child = Child(tmp_path, "--in-format", "msgpack", "--tag-key", "tag")
    child.write(msgpack.packb(tagged(first)) + packed[:len(packed) // 3])
    unpacker = msgpack.Unpacker(raw=False)
    while True:  # read until the first record's output is complete
        unpacker.feed(os.read(child.proc.stdout.fileno(), 65536))
        try:
            first_out = unpacker.unpack()
            break
        except msgpack.OutOfData:
            continue
    child.write(packed[len(packed) // 3:])
    child.proc.stdin.close()
    rest, status = child.finish()
    unpacker.feed(rest)
    assert status == 0 and child.stderr == b""
    assert_reconciles([first, second], [first_out] + list(unpacker))


def test_msgpack_garbage_becomes_one_rejected_record_and_the_stream_resumes(tmp_path):
    garbage = [(GARBAGE, GARBAGE)]
    items = mixed_items(1200, seed=11, malformed=garbage)
    chunks = random_chunks(msgpack_stream(items), seed=12)
    out, child = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"], chunks)
    counts = assert_reconciles(items, msgpack_outputs(out))
    assert counts["rejected"] >= 1200 // 37
    assert_summary(child, counts)
    assert "not a msgpack record" in child.log


def test_msgpack_garbage_with_json_output_keeps_the_bytes_readable(tmp_path):
    first, second = mixed_items(2, seed=13)
    data = msgpack.packb(tagged(first)) + GARBAGE + msgpack.packb(tagged(second))
    out, _ = run_child(tmp_path, ["--in-format", "msgpack", "--out-format", "json",
                                  "--tag-key", "tag"], [data])
    outputs = json_outputs(out)
    expected = GARBAGE.decode("utf-8", "backslashreplace")
    assert_reconciles([first, Item("malformed", None, original=expected), second], outputs)


def test_msgpack_record_with_invalid_utf8_is_rejected_alone(tmp_path):
    first, second = mixed_items(2, seed=14)
    broken = msgpack.packb({"tag": "app.broken", "message": "caf\u00e9"})
    broken = broken.replace("caf\u00e9".encode("utf-8"), b"caf\xe9\x00")  # latin-1 byte
    data = msgpack.packb(tagged(first)) + broken + msgpack.packb(tagged(second))
    out, _ = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"],
                       random_chunks(data, seed=15, largest=40))
    outputs = msgpack_outputs(out)
    # Undecodable strings stay bytes (msgpack bin) so the original is kept byte for byte.
    original = {b"tag": b"app.broken", b"message": b"caf\xe9\x00"}
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(out)
    assert list(unpacker)[1]["original".encode()] == original
    assert_reconciles([first, Item("malformed", None), second], outputs)


def test_msgpack_non_map_objects_are_rejected_records(tmp_path):
    first, second, third = mixed_items(3, seed=16)
    # Objects that are not records are damage up to the next record: one alone keeps its
    # decoded form, several in a row are one rejection holding their bytes.
    together = msgpack.packb([1, 2]) + msgpack.packb("text")
    data = (msgpack.packb(tagged(first)) + msgpack.packb([1, 2]) + msgpack.packb(tagged(second))
            + together + msgpack.packb(tagged(third)))
    out, _ = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"], [data])
    assert_reconciles([first, Item("malformed", None, original=[1, 2]), second,
                       Item("malformed", None, original=together), third], msgpack_outputs(out))


def test_msgpack_object_cut_off_by_eof_becomes_one_rejected_record(tmp_path):
    first, second = mixed_items(2, seed=17)
    cut = msgpack.packb(tagged(second))[:25]
    out, child = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"],
                           [msgpack.packb(tagged(first)) + cut])
    assert_reconciles([first, Item("malformed", None, original=cut)], msgpack_outputs(out))
    assert "input ended inside an object" in child.log


@pytest.mark.parametrize("in_format", ["json", "msgpack"])
def test_record_over_the_size_limit_is_one_rejected_record(tmp_path, in_format):
    first, last = mixed_items(2, seed=22)
    big = Item("passed", "app.big", {"level": "info", "message": "x" * 20000})
    items = [first, big, last]
    data = json_stream(items) if in_format == "json" else msgpack_stream(items)
    out, _ = run_child(tmp_path, ["--in-format", in_format, "--out-format", in_format, "--tag-key", "tag",
                                  "--max-record-size", "4k"],
                       random_chunks(data, seed=23, largest=300))
    outputs = json_outputs(out) if in_format == "json" else msgpack_outputs(out)
    # An oversized record is never buffered whole: the original holds its first bytes. A
    # JSON line is not parsed, so its tag is unknown; a msgpack record is walked through
    # by its structure, which finds the tag on the way.
    if in_format == "json":
        assert_reconciles([first, Item("malformed", None), last], outputs)
    else:
        assert_reconciles([first, Item("malformed", None), last],
                          [outputs[0], {**outputs[1], "tag": "atnorm.rejected"}, outputs[2]])
        assert outputs[1]["tag"] == "app.big.rejected"
        assert outputs[1]["original"] == msgpack_stream([big])[:1024]
    assert [reason["rule"] for reason in outputs[1]["reasons"]] == ["record.size"]


def test_resync_finds_the_next_record_after_garbage():
    record = msgpack.packb({"tag": "app.1", "message": "hello"})
    assert resync_offset(GARBAGE + record, "tag") == len(GARBAGE)
    # A candidate cut off by the end of the read cannot be decided yet: wait for more.
    assert resync_offset(GARBAGE + record[:4], "tag", eof=False) == -1
    assert resync_offset(GARBAGE + record[:4], "tag", eof=True) is None
    # A map-start byte inside garbage is no resync point unless a record reads from it.
    assert resync_offset(b"\xc1\x81\x01\x02" + record, "tag") == 4
    assert resync_offset(b"\xc1\x81\xa1x\x02" + record, "tag") == 5  # no tag key
    assert resync_offset(GARBAGE) is None


# --- TSV ------------------------------------------------------------------------------------

def test_tsv_records_are_filtered_and_bad_lines_rejected(tmp_path):
    lines = [b"app.1\tINFO\tcache warmed",
             b"app.2\tWARN",                      # a field missing
             b"app.3\tERROR\tdisk \xff full"]     # invalid UTF-8
    out, _ = run_child(tmp_path, ["--in-format", "tsv", "--out-format", "json", "--tsv-keys", "tag,level,message",
                                  "--tag-key", "tag"], [b"\n".join(lines) + b"\n"])
    outputs = json_outputs(out)
    assert outputs[0] == {"tag": "app.1", "level": "INFO", "message": "cache warmed"}
    assert outputs[1]["tag"] == outputs[2]["tag"] == "atnorm.rejected"
    assert outputs[1]["original"] == "app.2\tWARN"
    assert [r["rule"] for r in outputs[1]["reasons"] + outputs[2]["reasons"]] == ["input.tsv"] * 2


# --- time key ---------------------------------------------------------------------------

def test_time_key_carries_normalized_event_time_or_the_incoming_value(tmp_path):
    accepted, rejected, passed = (RECORDS[kind][0] for kind in ("accepted", "rejected", "passed"))
    sent = "2024-06-01T00:00:00.000000000+0000"
    records = [{**accepted, "tag": "a", "time": sent}, {**rejected, "tag": "r", "time": sent},
               {**passed, "tag": "p", "time": sent}, {**passed, "tag": "p2"}]
    data = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    out, _ = run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag", "--time-key", "time"], [data])
    acc, rej, pas, pas2 = json_outputs(out)
    assert acc["time"] == acc["eventTime"] == "2024-05-01T10:00:00.120+0000"
    assert rej["time"] == sent and rej["original"] == rejected, "time is taken off the original"
    assert pas == {**passed, "tag": "p", "time": sent}
    assert pas2 == {**passed, "tag": "p2"}


# --- shutdown -------------------------------------------------------------------------------

@pytest.mark.parametrize("in_format", ["json", "msgpack"])
def test_sigterm_mid_batch_finishes_the_batch_and_what_already_arrived_then_exits_0(
        tmp_path, in_format):
    items = mixed_items(6000, seed=18)
    data = json_stream(items) if in_format == "json" else msgpack_stream(items)
    assert len(data) > 2 * READ_SIZE
    source = tmp_path / "input"
    source.write_bytes(data)
    with open(source, "rb") as stdin:
        child = Child(tmp_path, "--in-format", in_format, "--out-format", in_format,
                      "--tag-key", "tag", stdin=stdin)
    # A file gives the child a first batch of exactly READ_SIZE bytes, whose output is far
    # larger than a pipe holds: once a byte of it arrives, the child is inside that batch,
    # blocked writing it.
    first = child.proc.stdout.read(1)
    child.proc.send_signal(signal.SIGTERM)
    out, status = child.finish()
    out = first + out
    assert status == 0 and child.stderr == b""
    outputs = json_outputs(out) if in_format == "json" else msgpack_outputs(out)
    # Everything that had arrived (here: the whole file) is decided before the exit.
    counts = assert_reconciles(items, outputs)
    assert_summary(child, counts, how="SIGTERM")
    assert f"stop signal: read the {len(data) - READ_SIZE} bytes already in stdin" in child.log


def test_sigterm_while_waiting_for_input_exits_0_at_once(tmp_path):
    child = Child(tmp_path, "--out-format", "json", "--tag-key", "tag")
    item = mixed_items(1, seed=19)[0]
    child.write(json.dumps(tagged(item)).encode() + b"\n")
    output = read_json_record(child.proc.stdout)  # the child is now idle on stdin
    child.proc.send_signal(signal.SIGTERM)
    rest, status = child.finish()
    assert status == 0 and rest.strip() == b"" and child.stderr == b""
    assert_reconciles([item], [output])
    assert "stopped on SIGTERM: received=1 " in child.log


def test_closed_stdin_exits_0_with_nothing_written(tmp_path):
    out, child = run_child(tmp_path, ["--in-format", "msgpack", "--tag-key", "tag"], [])
    assert out == b""
    assert "stopped on eof: received=0 " in child.log


def test_respawned_child_appends_to_the_same_log(tmp_path):
    items = mixed_items(4, seed=20)
    for _ in range(2):
        run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag"], [json_stream(items)])
    assert (tmp_path / "exec-filter.log").read_text().count("stopped on eof: received=4 ") == 2


# --- configuration --------------------------------------------------------------------------

def test_config_file_takes_the_same_keys_as_the_flags(tmp_path):
    config = tmp_path / "exec-filter.yaml"
    config.write_text("in_format: msgpack\nout_format: json\ntag_key: tag\n"
                      "rejected_tag_suffix: .dead\nquiet: true\n")
    items = mixed_items(30, seed=21)
    out, child = run_child(tmp_path, ["--config", str(config)], [msgpack_stream(items)])
    outputs = json_outputs(out)
    assert len(outputs) == 30
    for item, output in zip(items, outputs):
        assert output["tag"] == item.tag + (".dead" if item.kind == "rejected" else "")
    assert "started" not in child.log and "stopped on eof" in child.log  # quiet keeps the summary


@pytest.mark.parametrize("args, message", [
    (["--config", "{config}"], "key 'tag_kye': unknown option"),
    (["--in-format", "xml"], "expected one of json, msgpack, tsv"),
    (["--in-format", "tsv"], "needs tsv_keys"),
    (["--in-format", "tsv", "--tsv-keys", "level,message", "--tag-key", "tag"],
     "not one of the tsv_keys"),
    (["--log-file", "/nonexistent-dir/x.log"], "cannot open for appending"),
])
def test_usage_mistakes_are_one_line_errors(tmp_path, args, message):
    config = tmp_path / "bad.yaml"
    config.write_text("tag_kye: tag\n")
    args = [arg.replace("{config}", str(config)) for arg in args]
    result = subprocess.run(exec_filter_command(*args), input=b"", capture_output=True)
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


# --- the Fluentd config shipped in conf/ ------------------------------------------------------

def parse_fluentd_conf(text: str) -> Dict[str, Any]:
    """Fluentd's config structure: {"params": {...}, "sections": [(name, arg, node), ...]};
    raises on unbalanced or mismatched section tags."""
    root: Dict[str, Any] = {"params": {}, "sections": []}
    stack: List[Tuple[str, Dict[str, Any]]] = [("", root)]
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        closing = re.fullmatch(r"</(\w+)>", line)
        opening = re.fullmatch(r"<(\w+)(?:\s+([^>]*))?>", line)
        if closing:
            name, _ = stack.pop()
            assert name == closing.group(1), f"line {number}: </{closing.group(1)}> closes <{name}>"
        elif opening:
            node: Dict[str, Any] = {"params": {}, "sections": []}
            stack[-1][1]["sections"].append((opening.group(1), opening.group(2), node))
            stack.append((opening.group(1), node))
        else:
            assert not line.startswith("<"), f"line {number}: malformed section tag"
            key, _, value = line.partition(" ")
            stack[-1][1]["params"][key] = value.strip()
    assert len(stack) == 1, f"unclosed <{stack[-1][0]}>"
    return root


def sections(node: Dict[str, Any], name: str) -> List[Tuple[Optional[str], Dict[str, Any]]]:
    return [(arg, child) for kind, arg, child in node["sections"] if kind == name]


def test_fluentd_conf_is_balanced_and_agrees_with_its_command_line():
    conf = parse_fluentd_conf(CONF.read_text(encoding="utf-8"))
    labels = {arg: node for arg, node in sections(conf, "label")}
    (_, source), = sections(conf, "source")
    raw = labels[source["params"]["@label"]]
    (pattern, node), = [(arg, node) for arg, node in sections(raw, "match")
                        if node["params"]["@type"] == "exec_filter"]
    argv = shlex.split(node["params"]["command"])
    assert argv[:2] == ["atnorm", "exec-filter"]
    args = cli.build_parser().parse_args(argv[1:])  # atnorm's own parser takes it
    assert args.run.__module__ == "atnorm.cli.exec_filter"

    (_, fmt), = sections(node, "format")
    (_, parse), = sections(node, "parse")
    (_, inject), = sections(node, "inject")
    (_, extract), = sections(node, "extract")
    assert fmt["params"]["@type"] == args.in_format == "msgpack"
    assert parse["params"]["@type"] == args.out_format == "msgpack"
    assert inject["params"]["tag_key"] == extract["params"]["tag_key"] == args.tag_key
    assert inject["params"]["time_key"] == extract["params"]["time_key"] == args.time_key
    assert extract["params"]["time_type"] == "string"
    assert "%N%z" in extract["params"]["time_format"]
    assert node["params"]["child_respawn"]
    # Deprecated in Fluentd 1.x ("use @label instead for event routing").
    assert not {"remove_prefix", "add_prefix"} & set(node["params"])

    # Output goes to its own label, so it never loops back into the exec_filter, and dead
    # letters get their own route before the accepted one catches them.
    checked = labels[node["params"]["@label"]]
    assert checked is not raw
    suffix = args.rejected_tag_suffix or ".rejected"
    routes = [arg for arg, _ in sections(checked, "match")]
    first_match = lambda tag: next(p for p in routes if fluentd_match(p, tag))  # noqa: E731
    assert first_match(f"app.audit{suffix}") == "**.rejected"
    assert first_match(f"atnorm{suffix}") == "**.rejected"
    assert first_match("app.audit") != "**.rejected"
    for _, route in sections(checked, "match"):
        for _, server in sections(route, "server"):
            assert re.fullmatch(r"[\d.]+|localhost", server["params"]["host"]), \
                "a host that does not resolve fails `fluentd --dry-run`"


def fluentd_match(pattern: str, tag: str) -> bool:
    """Fluentd's tag patterns: `*` one part, `**` zero or more parts, `a b` either."""
    for alternative in pattern.split():
        regex = re.escape(alternative).replace(r"\*\*\.", r"(?:[^.]+\.)*")
        regex = regex.replace(r"\.\*\*", r"(?:\.[^.]+)*").replace(r"\*\*", r".*")
        regex = regex.replace(r"\*", r"[^.]+")
        if re.fullmatch(regex, tag):
            return True
    return False


# --- the benchmark helper -----------------------------------------------------------------

def test_measure_exec_filter_reports_both_formats():
    from atnorm.bench.execfilter import measure_exec_filter

    records = [record for kind in ("accepted", "rejected", "passed") for record in RECORDS[kind]]
    result = measure_exec_filter(records, seconds_budget=0.6)
    for fmt in ("json", "msgpack"):
        assert result[fmt]["records"] > 0
        assert result[fmt]["records_per_s"] > 0
        counted = result[fmt]["records"] + result[fmt]["warmup_records"]
        assert counted == sum(result[fmt]["outcomes"].values())


def test_the_echo_child_runs_in_the_same_harness_and_returns_every_record():
    from atnorm.bench.execfilter import measure_echo_child

    records = [record for kind in ("accepted", "rejected", "passed") for record in RECORDS[kind]]
    result = measure_echo_child(records, seconds_budget=0.4)
    for fmt in ("json", "msgpack"):
        assert result[fmt]["records"] > 0
        assert result[fmt]["warmup_records"] > 0
        assert "outcomes" not in result[fmt]


def test_the_exec_filter_figure_is_atnorm_over_the_echo_child_per_format():
    from atnorm.bench.execfilter import bench_figures

    [figure] = bench_figures(200, 0.1, rounds=1, seconds_budget=1.6)
    for fmt in ("json", "msgpack"):
        atnorm, echo = figure[f"{fmt}_records_per_s"], figure[f"{fmt}_echo_records_per_s"]
        assert atnorm > 0 and echo > 0
        assert figure[f"{fmt}_ratio"] == round(atnorm / echo, 2)
