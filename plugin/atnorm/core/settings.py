"""Options every way of running the filter shares (schemas, tuning, eventTime form).

Declared once here; each command adds them to its parser and resolves them the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional

from ..config.options import Option, add_arguments, resolve, size_bytes, text, whole_number
from .normalize import WRAPPER_CLASH, WRAPPER_MODES
from .pipeline import EventFilter, FilterSettings
from .stats import FilterStats


def fraction_digits(value: Any) -> int:
    return whole_number(value, 0, 9, "0 to 9 fractional digits")


FILTER_OPTIONS = [
    Option("schemas", text, [], "extra directory of generated schemas (adds or replaces services)",
           multiple=True, metavar="DIR"),
    Option("tuning", text, None, "per-service tuning file (YAML)", metavar="FILE"),
    Option("time_fraction_digits", fraction_digits, 3,
           "fractional digits of the canonical eventTime (0 to 9)", metavar="N"),
    Option("max_record_size", size_bytes, 1 << 20, "largest record accepted for parsing, in bytes (e.g. 1M)",
           metavar="SIZE"),
    Option("annotate", text, "atnorm", "key under which derived fields and fixes are added ('' for none)",
           metavar="KEY"),
    Option("wrapper_fields", text, "merge",
           "an envelope's other fields (kubernetes, stream beside a log string) on the accepted event: "
           "merge (beside its fields), nest (under --wrapper-key) or drop", choices=WRAPPER_MODES),
    Option("wrapper_key", text, "wrapper",
           "key for the nested envelope fields, and for the value that loses a name clash", metavar="KEY"),
    Option("wrapper_clash", text, "event",
           "which value keeps a name both the event and its envelope use: event or wrapper",
           choices=WRAPPER_CLASH),
]


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, FILTER_OPTIONS)


def filter_settings(values: Dict[str, Any]) -> FilterSettings:
    """FilterSettings from resolved option values (tuning file applied when given)."""
    settings = FilterSettings(
        schema_dirs=[Path(d) for d in values.get("schemas") or []],
        fraction_digits=values.get("time_fraction_digits", 3),
        max_record_bytes=values.get("max_record_size", 1 << 20),
        annotation_key=values.get("annotate") or None,
        wrapper_fields=values.get("wrapper_fields", "merge"),
        wrapper_key=values.get("wrapper_key") or "wrapper",
        wrapper_clash=values.get("wrapper_clash", "event"),
    )
    if values.get("tuning"):
        from .tuning import apply_tuning_file  # only when asked for

        settings = apply_tuning_file(values["tuning"], settings)
    return settings


def build_filter(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None,
                 stats: Optional[FilterStats] = None) -> EventFilter:
    """The EventFilter a command's flags (and config file values) describe."""
    values = resolve(FILTER_OPTIONS, args, file_values)
    return EventFilter.from_schemas(settings=filter_settings(values), stats=stats)


