"""File-mode throughput: JSON lines in, JSON lines out, as `atnorm filter` does it.

Measured in one run on the same lines (interleaved rounds, the best counts):
- atnorm: `EventFilter.process_json` per line and its output line, as `atnorm filter` writes it;
- a plain python-jsonschema filter: `json.loads`, the envelope and service validators
  with their errors for a failing record, `json.dumps` of the record;
- the same plain filter with a compiled validator instead, when it is installed:
  fastjsonschema (the schemas without `$schema`: it knows drafts 4 to 7, and they use no
  2020-12-only keyword) and jsonschema-rs; neither normalizes. Their verdicts are compared
  with python-jsonschema's on every line, and the lines where they differ are counted;
- the JSON decode alone, `json.loads` against `jsoncodec.loads` (msgspec), per line.
Figures are CPU seconds of this process (`time.process_time`), so other work on the
machine disturbs them less than it would wall time.
"""

from __future__ import annotations

import gc
import importlib
import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance

from ..core import jsonlines
from ..core.pipeline import EventFilter
from ..model import jsoncodec
from ..model.verdict import REJECTED
from .eventgen import EventGenerator

ROUNDS = 3
# A validator per schema: (document → valid?) for the envelope and each service.
Validators = Tuple[Callable[[Any], bool], Dict[str, Callable[[Any], bool]]]


def _fastjsonschema(rules: Any) -> Optional[Validators]:
    try:
        fastjsonschema = importlib.import_module("fastjsonschema")
    except ImportError:
        return None

    def compiled(raw: Dict[str, Any]) -> Callable[[Any], bool]:
        validate = fastjsonschema.compile({k: v for k, v in raw.items() if k != "$schema"})

        def is_valid(document: Any) -> bool:
            try:
                validate(document)
            except fastjsonschema.JsonSchemaException:
                return False
            return True
        return is_valid

    return compiled(rules.envelope.raw), {name: compiled(doc.raw) for name, doc in rules.services.items()}


def _jsonschema_rs(rules: Any) -> Optional[Validators]:
    try:
        jsonschema_rs = importlib.import_module("jsonschema_rs")
    except ImportError:
        return None
    return (jsonschema_rs.validator_for(rules.envelope.raw).is_valid,
            {name: jsonschema_rs.validator_for(doc.raw).is_valid for name, doc in rules.services.items()})


def _counted(run: Callable[[], List[bool]]) -> Callable[[], int]:
    return lambda: len(run())


OPTIONAL_VALIDATORS = {"fastjsonschema": _fastjsonschema, "jsonschema_rs": _jsonschema_rs}


def bench_figures(records: int, invalid_ratio: float, rounds: int = ROUNDS, seed: int = 1) -> List[Dict[str, Any]]:
    event_filter = EventFilter.from_schemas()
    generated = EventGenerator(event_filter.rules, seed).mix(records, invalid_ratio)
    lines = [json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
             for record in generated]
    envelope = Draft202012Validator(event_filter.rules.envelope.raw)
    services = {name: Draft202012Validator(doc.raw) for name, doc in event_filter.rules.services.items()}
    rules = event_filter.rules
    del generated

    def through_filter() -> int:
        process_json = event_filter.process_json
        dumps, record_line = jsonlines.dumps, jsonlines.record_line
        out = []
        for line in lines:
            verdict = process_json(line)
            out.append(dumps(verdict.dead_letter()) if verdict.outcome == REJECTED else record_line(verdict))
        return len(out)

    def plain_jsonschema() -> int:
        out = []
        for line in lines:
            record = json.loads(line)
            errors = sorted(envelope.iter_errors(record), key=relevance, reverse=True)
            if not errors:
                action = record.get("action")
                service = rules.service_for(action) if isinstance(action, str) else None
                if service is not None:
                    errors = sorted(services[service].iter_errors(record), key=relevance, reverse=True)
            out.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        return len(out)

    def verdicts_with(envelope_valid: Callable[[Any], bool],
                      service_valid: Dict[str, Callable[[Any], bool]]) -> Callable[[], List[bool]]:
        def run() -> List[bool]:
            out, verdicts = [], []
            for line in lines:
                record = json.loads(line)
                valid = envelope_valid(record)
                if valid:
                    action = record.get("action")
                    service = rules.service_for(action) if isinstance(action, str) else None
                    if service is not None:
                        valid = service_valid[service](record)
                verdicts.append(valid)
                out.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            return verdicts
        return run

    def decode_with(loads: Callable[[Any], Any]) -> Callable[[], int]:
        def run() -> int:
            return len([loads(line) for line in lines])
        return run

    runs: Dict[str, Callable[[], int]] = {
        "atnorm": through_filter,
        "jsonschema": plain_jsonschema,
        "decode_json": decode_with(json.loads),
        "decode_msgspec": decode_with(jsoncodec.loads),
    }
    compiled = {name: make(rules) for name, make in OPTIONAL_VALIDATORS.items()}
    compiled_runs = {name: verdicts_with(*validators) for name, validators in compiled.items()
                     if validators is not None}
    reference = verdicts_with(envelope.is_valid, {name: v.is_valid for name, v in services.items()})()
    disagreements = {name: sum(a != b for a, b in zip(run(), reference)) for name, run in compiled_runs.items()}
    runs.update({name: _counted(run) for name, run in compiled_runs.items()})
    best = {name: 0.0 for name in runs}
    gc.collect()
    gc.freeze()  # as serve and exec-filter do once the schemas are loaded
    try:
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.process_time()
                count = run()
                elapsed = time.process_time() - start
                best[name] = max(best[name], count / elapsed if elapsed > 0 else 0.0)
    finally:
        gc.unfreeze()

    def us(name: str) -> Any:
        return round(1e6 / best[name], 2) if best[name] else None

    return [{
        "figure": "file mode (JSON lines in and out, CPU time)",
        "records": len(lines),
        "invalid_ratio": invalid_ratio,
        "atnorm_records_per_s": round(best["atnorm"]),
        "jsonschema_records_per_s": round(best["jsonschema"]),
        "ratio": round(best["atnorm"] / best["jsonschema"], 2) if best["jsonschema"] else None,
        **{key: value for name in compiled_runs for key, value in (
            (f"{name}_records_per_s", round(best[name])),
            (f"atnorm_over_{name}", round(best["atnorm"] / best[name], 2) if best[name] else None),
            (f"{name}_verdicts_unlike_jsonschema", disagreements[name]))},
    }, {
        "figure": "JSON decode per line (json.loads vs msgspec with the stdlib as reference)",
        "records": len(lines),
        "json_loads_us": us("decode_json"),
        "msgspec_loads_us": us("decode_msgspec"),
    }]
