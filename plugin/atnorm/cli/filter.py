"""`atnorm filter`: JSON lines in; accepted (and passed-through) out; rejected to a file.

A one-line summary goes to stderr at the end. Bad input lines are rejections with a
reason; the exit status is non-zero only for usage or I/O errors.

Dead letters are never destroyed: every input is opened before any output, so a run that
cannot read its input leaves the files as they were, and `--rejected` / `--passed` files
are appended to.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

from ..core.jsonlines import dumps, record_line
from ..core.settings import add_filter_arguments, build_filter
from ..model.verdict import ACCEPTED, PASSED, REJECTED

STDIN = "-"
# A terminal gets a progress line at most this often (seconds) and only every so many records.
PROGRESS_INTERVAL = 0.5
PROGRESS_EVERY = 1000


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSON-lines input files, or files holding one JSON document or an array "
                             "of them (pretty-printed is fine); '-' or none for stdin")
    parser.add_argument("--rejected", metavar="FILE", default="rejected.jsonl",
                        help="where rejected records go, each as {original, reasons, input}; appended "
                             "to, never truncated (default: rejected.jsonl; '-' for stderr)")
    parser.add_argument("--passed", metavar="FILE", default=None,
                        help="where passed-through (non Activity Tracker) records go, appended to "
                             "(default: stdout)")
    parser.add_argument("--summary-format", choices=("text", "json"), default="text",
                        help="the closing summary on stderr: one text line or one JSON object")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="a progress line (records, records/s) on stderr: auto shows it only "
                             "when stderr is a terminal")
    add_filter_arguments(parser)


# --- inputs ----------------------------------------------------------------------------------

# (where it came from within its input, raw line bytes or a parsed document)
Record = Tuple[Dict[str, int], Any]


class Input:
    """One input, opened before any output is: its name for dead letters, and its records."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = "<stdin>" if path == STDIN else path
        self.handle: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")
        self.hint: Optional[str] = None

    def records(self) -> Iterator[Record]:
        """JSON lines, or, for a file that starts like a pretty-printed document, its
        document (an object) or the items of its array."""
        first = self.handle.readline()
        start = first.strip()
        if start[:1] in (b"{", b"[") and not _is_json(start):
            # Not a whole document on its first line: a pretty-printed one, or damage.
            data = first + self.handle.read()
            try:
                document = json.loads(data)
            except (ValueError, RecursionError) as exc:
                self.hint = (f"{self.name} is neither JSON lines nor one JSON document ({exc}); "
                             f"each line was read as a record")
                yield from _numbered(data.splitlines(keepends=True))
                return
            if isinstance(document, list):
                for index, item in enumerate(document, 1):
                    yield {"item": index}, item
            else:
                yield {"line": 1}, document
            return
        yield {"line": 1}, first
        yield from _numbered(self.handle, start=2)

    def close(self) -> None:
        if self.path != STDIN:
            self.handle.close()


def _is_json(text: bytes) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


def _numbered(lines: Any, start: int = 1) -> Iterator[Record]:
    for number, line in enumerate(lines, start):
        yield {"line": number}, line


def open_inputs(paths: List[str]) -> List[Input]:
    """Every input opened, or an OSError before anything was written."""
    opened: List[Input] = []
    try:
        for path in paths or [STDIN]:
            opened.append(Input(path))
    except OSError:
        for done in opened:
            done.close()
        raise
    return opened


def _open_out(path: Optional[str], default: IO[str]) -> IO[str]:
    if path is None:
        return default
    if path == STDIN:
        return sys.stderr
    return open(path, "a", encoding="utf-8")


# --- progress --------------------------------------------------------------------------------

class Progress:
    """`N records, R records/s` rewritten in place on a terminal; nothing when piped."""

    def __init__(self, stream: IO[str], shown: bool) -> None:
        self.stream = stream
        self.shown = shown
        self.started = self.last = time.monotonic()
        self.written = False

    def update(self, records: int) -> None:
        if not self.shown or records % PROGRESS_EVERY:
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self._show(records, now)

    def finish(self, records: int) -> None:
        if self.shown:
            self._show(records, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, records: int, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        self.stream.write(f"\r{records} records, {records / elapsed:,.0f} records/s ")
        self.stream.flush()
        self.written = True


# --- the run ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    event_filter = build_filter(args)
    try:
        inputs = open_inputs(args.files)
    except OSError as exc:
        # Nothing has been opened for writing yet: the dead letters of earlier runs stay.
        print(f"atnorm filter: error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    accepted_out = sys.stdout
    try:
        rejected_out = _open_out(args.rejected, sys.stderr)
        passed_out = _open_out(args.passed, sys.stdout)
    except OSError as exc:
        print(f"atnorm filter: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    shown = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = Progress(sys.stderr, shown)
    records = 0
    current: Optional[Input] = None
    try:
        for current in inputs:
            for where, raw in current.records():
                if isinstance(raw, bytes):
                    line = raw.rstrip(b"\r\n")
                    if not line or line.isspace():
                        continue  # blank lines carry no record
                    verdict = event_filter.process_json(line)
                else:
                    verdict = event_filter.process(raw)
                if verdict.outcome == ACCEPTED:
                    accepted_out.write(record_line(verdict) + "\n")
                elif verdict.outcome == PASSED:
                    passed_out.write(record_line(verdict) + "\n")
                else:
                    assert verdict.outcome == REJECTED
                    dead_letter = verdict.dead_letter()
                    dead_letter["input"] = {"file": current.name, **where}
                    rejected_out.write(dumps(dead_letter) + "\n")
                records += 1
                progress.update(records)
            if current.hint:
                print(f"atnorm filter: hint: {current.hint}", file=sys.stderr)
    except BrokenPipeError:
        raise  # the reader of stdout went away (`| head`): the dispatcher ends quietly
    except OSError as exc:
        failed = exc.filename or (current.name if current is not None else "input")
        print(f"atnorm filter: error: {failed}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        for handle in (rejected_out, passed_out):
            if handle not in (sys.stdout, sys.stderr):
                handle.close()
        for opened in inputs:
            opened.close()
    accepted_out.flush()
    progress.finish(records)
    stats = event_filter.stats
    if args.summary_format == "json":
        print(dumps(stats.snapshot()), file=sys.stderr)
    else:
        print(stats.summary_line(), file=sys.stderr)
    return 0
