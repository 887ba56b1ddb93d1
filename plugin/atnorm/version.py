"""The package version and how it was built, in a module of its own so every layer can
report them."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import List

__version__ = "0.1.0"

_PACKAGE = Path(__file__).resolve().parent


def compiled_modules() -> List[str]:
    """The package's modules installed as compiled extensions (setup.py), dotted and
    sorted; an extension beside a module's source is what `import` loads."""
    suffixes = sorted(EXTENSION_SUFFIXES, key=len, reverse=True)  # `.cpython-311-….so` before `.so`
    names = set()
    for path in _PACKAGE.rglob("*.*"):
        suffix = next((suffix for suffix in suffixes if path.name.endswith(suffix)), None)
        if suffix is not None:
            parts = path.relative_to(_PACKAGE).parts
            names.add(".".join(("atnorm",) + parts[:-1] + (parts[-1][:-len(suffix)],)))
    return sorted(names)


def build_text() -> str:
    """`atnorm 0.1.0 (10 modules compiled)`, or `(interpreted)` where none is."""
    compiled = compiled_modules()
    kind = f"{len(compiled)} modules compiled" if compiled else "interpreted"
    return f"atnorm {__version__} ({kind})"
