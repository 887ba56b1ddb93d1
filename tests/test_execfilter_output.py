"""What `atnorm exec-filter` writes back to Fluentd: one record per record even when one
cannot be encoded, strict JSON, JSON output that Fluentd's block-wise reader receives at
once, and msgpack bin strings from Fluentd's ltsv/none parsers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading

import msgpack
import pytest
from test_execfilter import FIXTURES, Child, exec_filter_command, json_outputs, mixed_items, msgpack_outputs, run_child, tagged

from atnorm.model.jsoncodec import MAX_NESTING

MSGPACK_IN = ["--in-format", "msgpack", "--tag-key", "tag"]


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


# --- item: an exception for one record is one rejection ------------------------------------

@pytest.mark.parametrize("out_format", ["json", "msgpack"])
def test_record_nested_too_deep_to_read_is_one_rejection(tmp_path, out_format):
    deep = {"tag": "app.deep", "deep": nested(995)}
    data = (msgpack.packb({"tag": "app.1", "m": "ok"}) + msgpack.Packer().pack(deep)
            + msgpack.packb({"tag": "app.2", "m": "ok"}))
    out, child = run_child(tmp_path, MSGPACK_IN + ["--out-format", out_format], [data])
    outputs = json_outputs(out) if out_format == "json" else msgpack_outputs(out)
    assert len(outputs) == 3  # was: RecursionError, exit 1, the whole batch lost
    assert outputs[0] == {"tag": "app.1", "m": "ok"} and outputs[2] == {"tag": "app.2", "m": "ok"}
    rejected = outputs[1]
    assert rejected["tag"] == "app.deep.rejected"
    assert [(r["rule"], r["message"]) for r in rejected["reasons"]] == [
        ("record.encoding", f"nesting deeper than {MAX_NESTING} levels")]
    # The original is kept whole: nested as far as every encoder goes, the rest as JSON text.
    node, depth = rejected["original"]["deep"], 0
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert node == "[" * (995 - depth) + '"bottom"' + "]" * (995 - depth)
    if out_format == "json":
        assert "stopped on eof: received=3 accepted=0 rejected=1 passed=2 " in child.log


def test_json_output_is_strict(tmp_path):
    """No NaN/Infinity literals and no lone surrogates (escaped or not) in JSON output."""
    lines = [b'{"tag": "app.1", "x": NaN, "y": -Infinity}',
             b'{"tag": "app.2", "text": "half a pair: \\ud800"}',
             b'{"tag": "app.3", "ok": true}']
    out, _ = run_child(tmp_path, ["--out-format", "json", "--tag-key", "tag"],
                       [b"\n".join(lines) + b"\n"])
    text = out.decode("utf-8")  # strict UTF-8

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in the output")

    outputs = [json.loads(line, parse_constant=no_constants) for line in text.splitlines()
               if line.strip()]
    # NaN and a lone surrogate are not values any agent can carry: those records are
    # rejected (record.encoding) with their originals spelled out, not passed on changed.
    assert [o["tag"] for o in outputs] == ["app.1.rejected", "app.2.rejected", "app.3"]
    for output in outputs:
        json.dumps(output, ensure_ascii=False).encode("utf-8")  # no lone surrogate survived
    assert [r["rule"] for r in outputs[0]["reasons"]] == ["record.encoding"]
    assert outputs[0]["original"] == {"x": "NaN", "y": "-Infinity"}
    assert [r["rule"] for r in outputs[1]["reasons"]] == ["record.encoding"]
    assert outputs[1]["original"]["text"].startswith("half a pair: ")


# --- item: JSON output reaches Fluentd at once ------------------------------------------------

def test_json_output_fills_whole_read_blocks(tmp_path):
    """A reader that waits for full 8 KiB blocks, as Fluentd's JSON parser does, gets a
    batch's records without waiting for more output."""
    child = Child(tmp_path, "--out-format", "json", "--tag-key", "tag")
    item, = mixed_items(1, seed=41)
    child.write(json.dumps(tagged(item)).encode() + b"\n")
    got = []
    reader = threading.Thread(target=lambda: got.append(child.proc.stdout.read(8192)), daemon=True)
    reader.start()
    reader.join(timeout=60)  # without padding this read waits until stdout closes
    child.proc.stdin.close()
    rest, status = child.finish()
    assert got and len(got[0]) == 8192, "the block was not filled"
    assert json_outputs(got[0])[0]["tag"].startswith(item.tag)
    assert status == 0 and rest == b""


def yajl_available() -> bool:
    if not shutil.which("ruby"):
        return False
    return subprocess.run(["ruby", "-ryajl", "-e", "1"], capture_output=True).returncode == 0


@pytest.mark.skipif(not yajl_available(), reason="needs ruby with yajl-ruby (Fluentd's JSON reader)")
@pytest.mark.parametrize("block_size, late_expected", [("8192", False), ("0", True)])
def test_fluentd_json_reader_gets_every_record_before_shutdown(tmp_path, block_size, late_expected):
    """Fluentd's shutdown: close the child's stdin, SIGTERM, read stdout with Yajl in
    8 KiB blocks. Records Yajl hands on only at EOF come too late for Fluentd; with the
    padding there are none."""
    items = mixed_items(3000, seed=42)
    data = b"".join(json.dumps(tagged(item)).encode() + b"\n" for item in items)
    reader = subprocess.Popen(["ruby", str(FIXTURES / "yajl_reader.rb"), "8192"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child = subprocess.Popen(
        exec_filter_command("--in-format", "json", "--out-format", "json", "--tag-key", "tag",
                            "--json-block-size", block_size,
                            "--log-file", str(tmp_path / "log")),
        stdin=subprocess.PIPE, stdout=reader.stdin, stderr=subprocess.DEVNULL)
    reader.stdin.close()
    view = memoryview(data)
    while view:
        view = view[os.write(child.stdin.fileno(), view):]
    child.stdin.close()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 0
    early, late = map(int, reader.stdout.read().split())
    assert reader.wait(timeout=120) == 0
    assert early + late == len(items)
    assert (late > 0) == late_expected


# --- item: bin strings --------------------------------------------------------------------

def test_bin_tag_time_and_values_from_ltsv_or_none_parsers(tmp_path):
    """Fluentd's ltsv/none parsers leave strings untyped: msgpack carries them as bin."""
    record = {b"tag": b"app.bin", b"time": b"2024-06-01T00:00:00.000000000+0000",
              b"message": b"plain text", b"level": b"info"}
    data = msgpack.packb({"tag": "app.0", "m": "ok"}) + msgpack.packb(record, use_bin_type=True)
    out, _ = run_child(tmp_path, MSGPACK_IN + ["--time-key", "time", "--out-format", "json"],
                       [data])
    first, second = json_outputs(out)
    assert first == {"tag": "app.0", "m": "ok"}
    assert second["tag"] in ("app.bin", "app.bin.rejected")  # was: the default tag
    assert second["time"] == "2024-06-01T00:00:00.000000000+0000"
