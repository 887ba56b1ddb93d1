"""The `atnorm` command: `main` dispatches to one module per subcommand."""

from .dispatch import build_parser, main

__all__ = ["build_parser", "main"]
