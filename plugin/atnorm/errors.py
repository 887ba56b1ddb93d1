"""The errors a user's mistake raises: reported as one line, never as a traceback.

Importable from every layer; nothing here imports the rest of atnorm.
"""

from __future__ import annotations

from typing import List, Optional


class AtnormError(Exception):
    """Base of the errors atnorm reports to the user without a traceback (exit 2)."""


class ConfigError(AtnormError):
    """A mistake in a config file or flag, told as file, line, key and what was expected."""

    def __init__(self, message: str, *, file: Optional[str] = None, line: Optional[int] = None,
                 key: Optional[str] = None) -> None:
        self.file, self.line, self.key, self.detail = file, line, key, message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        keypart = f"key '{key}': " if key else ""
        super().__init__(f"{where}{keypart}{message}")


class ConfigErrors(ConfigError):
    """Every mistake found in one file at once, one line each (what an agent's check prints)."""

    def __init__(self, errors: List[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        AtnormError.__init__(self, "\n".join(str(e) for e in self.errors))
        self.file, self.line, self.key, self.detail = first.file, first.line, first.key, first.detail


class UsageError(AtnormError):
    """A mistake in how a command was called; reported without a traceback, exit 2."""
