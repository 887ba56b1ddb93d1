"""How the long-running commands log: `--log-level` and `--log-format text|json`.

One handler on the `atnorm` logger, chosen at start-up. JSON lines carry the same fields
as the text form, so a log shipper can parse them without a regex.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Optional

from .options import Option, text

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

LOG_LEVEL = Option("log_level", text, "info", "log level: debug adds one line per connection and chunk",
                   choices=LOG_LEVELS, metavar="LEVEL", group="logging")
LOG_FORMAT = Option("log_format", text, "text", "log lines as text or as one JSON object each",
                    choices=LOG_FORMATS, metavar="text|json", group="logging")
LOG_OPTIONS = (LOG_LEVEL, LOG_FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, command, pid, message (and the error, if any)."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "command": self.command,
            "pid": os.getpid(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_formatter(command: str, log_format: str) -> logging.Formatter:
    """The formatter of `--log-format` for `atnorm COMMAND`."""
    if log_format == "json":
        return JsonFormatter(command)
    return logging.Formatter(f"%(asctime)s %(levelname)s atnorm {command}: %(message)s")


def configure_logging(command: str, level: str = "info", log_format: str = "text",
                      stream: Optional[IO[str]] = None) -> logging.Logger:
    """Send the `atnorm` loggers to `stream` (stderr) at `level`, in `log_format`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(log_formatter(command, log_format))
    logger = logging.getLogger("atnorm")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
