"""Runs the filter on lines and prints what it decided, with atnorm's compiled modules
loaded from their .py sources instead (`python tests/interpreted.py LINES_FILE`), or as
installed when imported: the two sides of `test_compiled_differential`.

LINES_FILE holds one line per line of text, hex-encoded (the lines are bytes that need not
be UTF-8). The output is one JSON document: what each line came to, and the counts.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path


class SourcesOnly(importlib.abc.MetaPathFinder):
    """Finds atnorm's modules as the normal path finder does, but gives a module that has
    an extension its .py source beside it instead."""

    def find_spec(self, name, path, target=None):
        if name != "atnorm" and not name.startswith("atnorm."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return spec
        source = Path(spec.origin).with_name(name.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(name, source)


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _is_text(as_text, problem, record):
    """What `process_text` asks of a record: `as_text` would leave it as it is."""
    try:
        return as_text(record) is record
    except problem:
        return False


def decisions(lines):
    """For each line: `process_json`'s verdict and output line; for a line the standard
    library parses, `process` on the parsed record too, and `process_text` when it is text (a text record's
    msgpack bytes included). Then the counts of both filters."""
    from atnorm.core import jsonlines
    from atnorm.core.normalize import EncodingProblem, as_text
    from atnorm.core.pipeline import EventFilter
    from atnorm.model.verdict import REJECTED

    def seen(verdict):
        out = jsonlines.dumps(verdict.dead_letter() if verdict.outcome == REJECTED else verdict.output())
        return [verdict.outcome, verdict.service, verdict.action, [r.as_dict() for r in verdict.reasons],
                verdict.warnings, verdict.fixes, verdict.event_time, out]

    from_lines, from_records = EventFilter.from_schemas(), EventFilter.from_schemas()
    results = []
    for line in lines:
        verdict = from_lines.process_json(line)
        result = {"line": seen(verdict) + [verdict.json_line]}
        try:
            record = json.loads(line)
        except ValueError:
            pass
        else:
            result["record"] = seen(from_records.process(record))
            if isinstance(record, dict) and _is_text(as_text, EncodingProblem, record):
                text = from_records.process_text(record)
                result["text"] = seen(text) + [text.packed]
        results.append(result)
    return _jsonable({"results": results, "line_counts": from_lines.stats.snapshot(),
                      "record_counts": from_records.stats.snapshot()})


def main(lines_file):
    sys.meta_path.insert(0, SourcesOnly())
    lines = [bytes.fromhex(text) for text in Path(lines_file).read_text().split("\n")]
    report = decisions(lines)
    compiled = [name for name, module in sys.modules.items() if name.startswith("atnorm")
                and str(getattr(module, "__file__", "")).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    report["extensions_loaded"] = compiled
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
