"""`atnorm exec-filter` settings: its options, declared once, and how they are loaded."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..config.logs import LOG_FORMAT, LOG_LEVEL
from ..config.options import (
    Option,
    boolean,
    load_config_file,
    options_of,
    resolve,
    setting,
    settings_from,
    shared,
    size_bytes,
    text,
)
from ..core.settings import DRIFT_STATE, FILTER_OPTIONS
from ..errors import ConfigError
from ..monitoring.metrics import METRICS_LISTEN


def key_list(value: Any) -> List[str]:
    """`a,b,c` or a YAML list → `["a", "b", "c"]`."""
    items = value if isinstance(value, list) else str(value).split(",")
    keys = [text(item).strip() for item in items]
    if not keys or any(not key for key in keys):
        raise ValueError(f"expected a comma-separated list of keys, got {value!r}")
    return keys


def block_size(value: Any) -> int:
    """A size in bytes such as 8192 or 8k; 0 turns the padding off."""
    if str(value).strip() == "0":
        return 0
    return size_bytes(value)


# See OutputEncoder: Fluentd's Yajl reads the child's JSON output in blocks of this size.
JSON_BLOCK_SIZE = 8192

@dataclass(frozen=True)
class ExecFilterSettings:
    """What `atnorm exec-filter` runs with: one typed field per option, declared here once
    (the filter's own options are FILTER_OPTIONS, shared with the other commands)."""

    in_format: str = setting(text, "json", "what Fluentd writes to stdin (its <format> @type)",
                             choices=("json", "msgpack", "tsv"), metavar="json|msgpack|tsv", group="input and output")
    out_format: str = setting(text, "msgpack",
                              "what to write to stdout for Fluentd's <parse> (msgpack: Fluentd reads it as it "
                              "comes; json: padded to json_block_size blocks)", choices=("json", "msgpack"),
                              metavar="json|msgpack", group="input and output")
    json_block_size: int = setting(block_size, JSON_BLOCK_SIZE,
                                   "with out_format json, pad the output after each batch to a multiple of this "
                                   "many bytes: Fluentd's <parse> stream_buffer_size (0: no padding)",
                                   metavar="BYTES", group="input and output")
    tag_key: Optional[str] = setting(text, None,
                                     "record key that carries the tag (Fluentd <inject>/<extract> tag_key); removed "
                                     "before filtering, put back on every output record", metavar="KEY",
                                     group="tag and time")
    rejected_tag_suffix: str = setting(text, ".rejected", "appended to the tag of rejected records (needs tag_key)",
                                       metavar="SUFFIX", group="tag and time")
    default_tag: str = setting(text, "atnorm", "tag for records that arrive without one, and for input that cannot "
                               "be parsed (needs tag_key)", metavar="TAG", group="tag and time")
    time_key: Optional[str] = setting(text, None,
                                      "record key for the event time, for Fluentd's <extract> time_key with "
                                      "time_type string: the normalized eventTime (2024-05-01T10:00:00.000+0000) on "
                                      "accepted records, the incoming value otherwise", metavar="KEY",
                                      group="tag and time")
    tsv_keys: Optional[Tuple[str, ...]] = setting(key_list, None, "field names of the TSV columns, in order "
                                                  "(required with in_format tsv)", metavar="K1,K2,...",
                                                  group="input and output")
    log_file: Optional[str] = setting(text, None, "append diagnostics, start-up errors and the summary line at exit "
                                      "to FILE (stderr stays silent); reopened on SIGHUP", metavar="FILE",
                                      group="logging")
    quiet: bool = setting(boolean, False, "write only the summary line at exit to the log file", group="logging")
    metrics_listen: Optional[str] = shared(METRICS_LISTEN)
    drift_state: Optional[str] = shared(DRIFT_STATE)
    log_level: str = shared(LOG_LEVEL)
    log_format: str = shared(LOG_FORMAT)


OPTIONS: Tuple[Option, ...] = options_of(ExecFilterSettings)


def load_settings(args: argparse.Namespace) -> Tuple[ExecFilterSettings, Dict[str, Any]]:
    """(exec-filter settings, raw config file values): defaults < `--config` file < flags,
    checked for combinations that cannot work."""
    config_path = getattr(args, "config", None)
    file_values = (load_config_file(config_path, list(OPTIONS) + list(FILTER_OPTIONS))
                   if config_path else {})
    settings = settings_from(ExecFilterSettings, resolve(OPTIONS, args, file_values))
    if settings.in_format == "tsv":
        if not settings.tsv_keys:
            raise ConfigError("in_format tsv needs tsv_keys (the column names, in order)",
                              key="tsv_keys")
        if settings.tag_key and settings.tag_key not in settings.tsv_keys:
            raise ConfigError(f"tag_key {settings.tag_key!r} is not one of the tsv_keys, so "
                              "no tag would ever arrive", key="tag_key")
    return settings, file_values
