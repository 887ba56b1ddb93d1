"""Options declared once: each drives its CLI flag, its config-file key, the README table
and a typed field of its command's settings object.

A command declares a frozen dataclass whose fields are `setting(...)`s (or `shared(option)`
for an option several commands take); `options_of` lists its `Option`s, `add_arguments`
builds the argparse flags (grouped in `--help`), `load_config_file` reads the same keys
from YAML (reporting file, line and key on a mistake), `resolve` merges default < file <
environment < command line, and `settings_from` makes the frozen settings object.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from ..errors import ConfigError, ConfigErrors
from .yamlfile import read_yaml


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


def host_port_text(host: str, port: int) -> str:
    """(host, port) → `HOST:PORT`, or `[v6addr]:PORT`: what `host_port` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(value: Any) -> str:
    """`HOST:PORT`, `[v6]:PORT` or `unix:///path`, checked and kept as text."""
    host_port(text(value))
    return str(value).strip()


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


def size_text(number: int) -> str:
    """Bytes as a user writes them, in the largest whole unit: 16777216 → "16M"."""
    for unit, shift in (("G", 30), ("M", 20), ("k", 10)):
        if number and number % (1 << shift) == 0:
            return f"{number >> shift}{unit}"
    return str(number)


def seconds_text(seconds: float) -> str:
    """Seconds as a user writes them: 120.0 → "120", 0.5 → "0.5"."""
    return f"{seconds:g}"


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
    group: str = ""

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


_OPTION = "atnorm.option"
Settings = TypeVar("Settings")


def setting(parse: Callable[[Any], Any], default: Any, help: str, *, multiple: bool = False,
            choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
            cli: bool = True, group: str = "") -> Any:
    """A field of a settings class that declares its option; the field's name is the key.

    `default` is written as a user would write it ("16M", "on"): the README and
    conf/atnorm.yaml show it so, and the option's parser turns it into the field's type."""
    return dataclasses.field(metadata={_OPTION: dict(
        parse=parse, default=default, help=help, multiple=multiple, choices=choices,
        metavar=metavar, cli=cli, group=group)})


def shared(option: Option) -> Any:
    """A field for an option declared once elsewhere and taken by several commands."""
    return dataclasses.field(metadata={_OPTION: option})


def options_of(cls: type) -> Tuple[Option, ...]:
    """The options a settings class declares, in field order."""
    options: List[Option] = []
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(_OPTION)
        if isinstance(spec, Option):
            if spec.key != item.name:
                raise TypeError(f"{cls.__name__}.{item.name} shares the option {spec.key!r}")
            options.append(spec)
        elif spec is not None:
            options.append(Option(item.name, **spec))
    return tuple(options)


def settings_from(cls: Type[Settings], values: Mapping[str, Any], **derived: Any) -> Settings:
    """The frozen settings object of resolved option values (lists become tuples);
    `derived` gives the fields that are not options themselves."""
    given: Dict[str, Any] = dict(derived)
    for option in options_of(cls):
        value = values[option.key]
        given.setdefault(option.key, tuple(value) if isinstance(value, list) else value)
    return cls(**given)


def defaults_of(cls: Type[Settings], **changes: Any) -> Settings:
    """The settings object with every option at its default, but for `changes`."""
    values = {option.key: None if option.default is None else option.convert(option.default)
              for option in options_of(cls)}
    return settings_from(cls, values, **changes)


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add one flag per option, in a `--help` section per group; defaults stay None so
    `resolve` can tell what was given."""
    groups: Dict[str, Any] = {}
    for option in options:
        if not option.cli:
            continue
        default_text = "" if option.default in (None, [], "") else f" (default: {option.default})"
        target: Any = parser
        if option.group:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(f"{option.group} options")
            target = groups[option.group]
        target.add_argument(
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
    values, node = read_yaml(path)
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
        elif option.default is None:
            resolved[option.key] = None
        else:
            # Declared as a user writes it ("16M", "on"): the option's own parser reads it.
            resolved[option.key] = option.convert(option.default)
    return resolved


def markdown_table(options: Iterable[Option]) -> str:
    """The README table for a set of options."""
    rows: List[str] = ["| config key | flag | default | meaning |", "|---|---|---|---|"]
    for option in options:
        default = "" if option.default in (None, [], "") else f"`{option.default}`"
        flag = f"`{option.flag}`" if option.cli else ""
        rows.append(f"| `{option.key}` | {flag} | {default} | {option.help} |")
    return "\n".join(rows)
