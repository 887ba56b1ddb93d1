"""Options declared once: each drives its CLI flag, its config-file key, and the README table.

A command lists its `Option`s; `add_arguments` builds the argparse flags,
`load_config_file` reads the same keys from YAML (reporting file, line and key on a
mistake), and `resolve` merges default < file < environment < command line.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError, ConfigErrors


def host_port(text: str) -> Tuple[str, int]:
    """`HOST:PORT`, `[v6addr]:PORT` or `unix:///path` (port 0) → (host, port)."""
    text = str(text).strip()
    if text.startswith("unix://"):
        return text, 0
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def whole_number(value: Any, low: int, high: Optional[int], expected: str) -> int:
    """`value` as an int from `low` to `high` (None: no limit); else a ValueError saying
    `expected` in the user's words (never Python's `invalid literal for int()`)."""
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"expected {expected}, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ValueError(f"expected {expected}, got {value!r}")
    return number


def positive_int(value: Any) -> int:
    return whole_number(value, 1, None, "a positive whole number such as 256")


def positive_float(value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive number of seconds such as 10 or 0.5, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"expected a positive number of seconds such as 10 or 0.5, got {value!r}")
    return number


def size_bytes(value: Any) -> int:
    """`1048576`, `512k`, `8M`, `1G` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().upper().rstrip("B").rstrip("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if not digits.isdigit():
            raise ValueError(f"expected a size such as 8M, got {value!r}")
        number = int(digits) * scale
    if number <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return number


def text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Option:
    """One setting: config key `key`, CLI flag `--key-with-dashes`, a parser, a default, help."""

    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    multiple: bool = False
    choices: Optional[Sequence[str]] = None
    metavar: Optional[str] = None
    cli: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable that sets it (containers): ATNORM_ and the key in capitals."""
        return "ATNORM_" + self.key.upper()

    def convert(self, value: Any) -> Any:
        if self.multiple:
            values = value if isinstance(value, list) else [value]
            return [self._convert_one(v) for v in values]
        return self._convert_one(value)

    def _convert_one(self, value: Any) -> Any:
        if self.choices is not None and str(value) not in self.choices:
            nearest = difflib.get_close_matches(str(value), list(self.choices), n=1, cutoff=0.6)
            hint = f" (did you mean {nearest[0]}?)" if nearest else ""
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}{hint}")
        try:
            return self.parse(value)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if message.startswith("expected") or message.startswith("at least") or " expected " in message:
                raise
            # A parser's own words (`invalid literal for int()`) are not the user's: say what fits.
            raise ValueError(f"expected {self.metavar or 'a value for ' + self.key}, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add one flag per option; defaults stay None so `resolve` can tell what was given."""
    for option in options:
        if not option.cli:
            continue
        default_text = "" if option.default in (None, [], "") else f" (default: {option.default})"
        parser.add_argument(
            option.flag,
            dest=option.key,
            action="append" if option.multiple else "store",
            default=None,
            metavar=option.metavar or option.key.upper(),
            help=option.help + default_text,
        )


def _key_lines(node: yaml.Node) -> Dict[str, int]:
    lines: Dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return lines


def load_yaml_mapping(path: str) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """Read a YAML mapping; returns (values, line of each top-level key)."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            source = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        node = yaml.compose(source, Loader=yaml.SafeLoader)
        values = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=path, line=line) from None
    if values is None:
        return {}, {}
    if not isinstance(values, dict):
        raise ConfigError("expected a mapping of option: value at the top level", file=path, line=1)
    return values, _key_lines(node) if node is not None else {}


def unknown_key(key: str, known: Iterable[str]) -> str:
    """What to say of a key no option has: the nearest known one, if it looks misspelt."""
    names = sorted(known)
    nearest = difflib.get_close_matches(key.replace("-", "_"), names, n=1, cutoff=0.6)
    if nearest:
        return f"unknown option; did you mean '{nearest[0]}'?"
    return f"unknown option (known: {', '.join(names)})"


def check_config_values(path: str, values: Dict[str, Any], lines: Dict[str, int],
                        options: Iterable[Option], sections: Sequence[str] = ()
                        ) -> Tuple[Dict[str, Any], List[ConfigError]]:
    """(the converted values, every mistake): each key checked, none left out after the first."""
    by_key = {o.key: o for o in options}
    result: Dict[str, Any] = {}
    errors: List[ConfigError] = []
    for key, raw in values.items():
        line = lines.get(str(key))
        if key in sections:
            result[key] = raw
            continue
        option = by_key.get(str(key).replace("-", "_"))
        if option is None:
            errors.append(ConfigError(unknown_key(str(key), list(by_key) + list(sections)),
                                      file=path, line=line, key=str(key)))
            continue
        try:
            result[option.key] = option.convert(raw)
        except (TypeError, ValueError) as exc:
            errors.append(ConfigError(str(exc), file=path, line=line, key=str(key)))
    return result, errors


def load_config_file(path: str, options: Iterable[Option],
                     sections: Sequence[str] = ()) -> Dict[str, Any]:
    """Read and check the option keys of a YAML file. Keys in `sections` are returned raw.

    Every mistake is reported at once (ConfigErrors), each with file, line and key."""
    values, lines = load_yaml_mapping(path)
    result, errors = check_config_values(path, values, lines, options, sections)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return result


def resolve(options: Iterable[Option], args: argparse.Namespace,
            file_values: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Merge default < config file < environment (ATNORM_KEY) < command line into one dict
    keyed by option key."""
    file_values = file_values or {}
    resolved: Dict[str, Any] = {}
    for option in options:
        given = getattr(args, option.key, None) if option.cli else None
        from_env = os.environ.get(option.env)
        if given is not None:
            try:
                resolved[option.key] = option.convert(given)
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc), key=option.flag) from None
        elif from_env is not None:
            try:
                value: Any = [v.strip() for v in from_env.split(",") if v.strip()] if option.multiple else from_env
                resolved[option.key] = option.convert(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc), key=option.env) from None
        elif option.key in file_values:
            resolved[option.key] = file_values[option.key]
        else:
            resolved[option.key] = list(option.default) if option.multiple else option.default
    return resolved


def markdown_table(options: Iterable[Option]) -> str:
    """The README table for a set of options."""
    rows: List[str] = ["| config key | flag | default | meaning |", "|---|---|---|---|"]
    for option in options:
        default = "" if option.default in (None, [], "") else f"`{option.default}`"
        flag = f"`{option.flag}`" if option.cli else ""
        rows.append(f"| `{option.key}` | {flag} | {default} | {option.help} |")
    return "\n".join(rows)
