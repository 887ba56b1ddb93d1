"""Where the installed package keeps its schemas, docs pages and overlays.

Both the run-time filter and the build-time generator need these folders; keeping the
lookup here lets the filter find its schemas without importing the generator.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_dir() -> Path:
    """The bundled schemas folder: `pages/`, `overlays/` and `generated/`."""
    return Path(str(files("atnorm.bundled_schemas")))


def bundled_schema_dir() -> Path:
    """The generated JSON Schemas the filter loads by default."""
    return bundled_dir() / "generated"
