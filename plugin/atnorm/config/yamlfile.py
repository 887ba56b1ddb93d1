"""The one YAML reader for config and tuning files: YAML 1.2 booleans, node positions kept.

PyYAML follows YAML 1.1, where `off`, `no` and `y` are booleans; a config value such as
`shared_key: no` or a tuning `mode: off` would silently change type. Here only
true/false are booleans, as in YAML 1.2 (and in Fluent Bit's and Kubernetes' YAML); the
options' own parsers still read `on`/`off`/`yes`/`no` where a switch is expected.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

import yaml

from ..errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def read_yaml(path: str) -> Tuple[Any, Optional[yaml.Node]]:
    """(the document's value, its root node for line numbers); a ConfigError with file and
    line if the file cannot be read or is not YAML."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            source = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    loader = _Loader(source)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=path, line=line) from None
    finally:
        loader.dispose()
    return data, node
