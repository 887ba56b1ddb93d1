"""Options every way of running the filter shares (schemas, tuning, eventTime form).

Declared once here, as the fields of `FilterOptions`; each command adds them to its parser,
resolves them the same way and gets one frozen, typed `FilterOptions` (which pickles, so
filter-pool workers get theirs that way).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..config.options import (
    Option,
    add_arguments,
    defaults_of,
    options_of,
    resolve,
    setting,
    settings_from,
    size_bytes,
    text,
    whole_number,
)
from .normalize import WRAPPER_CLASH, WRAPPER_MODES
from .pipeline import EventFilter, FilterSettings
from .stats import FilterStats


def fraction_digits(value: Any) -> int:
    return whole_number(value, 0, 9, "0 to 9 fractional digits")


# Both long-running commands can keep the drift log.
DRIFT_STATE = Option("drift_state", text, None,
                     "keep the actions no table declares in this JSON file (read it with `atnorm drift --state`)",
                     metavar="FILE", group="operations")


# The defaults a command starts from are the Python API's (FilterSettings), declared there once.
_API_DEFAULTS = FilterSettings()


@dataclass(frozen=True)
class FilterOptions:
    """The filter's options as a command resolved them: one typed field per option."""

    schemas: Tuple[str, ...] = setting(text, [], "extra directory of generated schemas (adds or replaces services)",
           multiple=True, metavar="DIR", group="filter")
    tuning: Optional[str] = setting(text, None, "per-service tuning file (YAML)", metavar="FILE", group="filter")
    time_fraction_digits: int = setting(fraction_digits, _API_DEFAULTS.fraction_digits,
           "fractional digits of the canonical eventTime (0 to 9)", metavar="N", group="filter")
    max_record_size: int = setting(size_bytes, _API_DEFAULTS.max_record_bytes,
           "largest record accepted for parsing, in bytes (e.g. 1M)",
           metavar="SIZE", group="filter")
    annotate: str = setting(text, _API_DEFAULTS.annotation_key,
           "key under which derived fields and fixes are added ('' for none)",
           metavar="KEY", group="filter")
    wrapper_fields: str = setting(text, _API_DEFAULTS.wrapper_fields,
           "an envelope's other fields (kubernetes, stream beside a log string) on the accepted event: "
           "merge (beside its fields), nest (under --wrapper-key) or drop", choices=WRAPPER_MODES, group="filter")
    wrapper_key: str = setting(text, _API_DEFAULTS.wrapper_key,
           "key for the nested envelope fields, and for the value that loses a name clash", metavar="KEY",
           group="filter")
    wrapper_clash: str = setting(text, _API_DEFAULTS.wrapper_clash,
           "which value keeps a name both the event and its envelope use: event or wrapper",
           choices=WRAPPER_CLASH, group="filter")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "FilterOptions":
        """From resolved option values (`resolve(FILTER_OPTIONS, ...)`)."""
        return settings_from(cls, values)

    @classmethod
    def defaults(cls, **changes: Any) -> "FilterOptions":
        """Every option at its default, but for `changes`."""
        return defaults_of(cls, **changes)


FILTER_OPTIONS: Tuple[Option, ...] = options_of(FilterOptions)


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, FILTER_OPTIONS)


def resolve_filter_options(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None) -> FilterOptions:
    """The filter options a command's flags (and config file values) give."""
    return FilterOptions.of(resolve(FILTER_OPTIONS, args, file_values))


def filter_settings(options: FilterOptions) -> FilterSettings:
    """FilterSettings from the filter options (tuning file applied when given)."""
    settings = FilterSettings(
        schema_dirs=[Path(d) for d in options.schemas],
        fraction_digits=options.time_fraction_digits,
        max_record_bytes=options.max_record_size,
        annotation_key=options.annotate or None,
        wrapper_fields=options.wrapper_fields,
        wrapper_key=options.wrapper_key or _API_DEFAULTS.wrapper_key,
        wrapper_clash=options.wrapper_clash,
    )
    if options.tuning:
        from .tuning import apply_tuning_file  # only when asked for

        settings = apply_tuning_file(options.tuning, settings)
    return settings


def build_filter(args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None,
                 stats: Optional[FilterStats] = None) -> EventFilter:
    """The EventFilter a command's flags (and config file values) describe."""
    return EventFilter.from_schemas(settings=filter_settings(resolve_filter_options(args, file_values)), stats=stats)
