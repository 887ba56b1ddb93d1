"""The relay's embedded destination: JSON-lines files in a data directory, synced before acks.

With no downstream configured, each route has a file in the data directory
(`accepted.jsonl`, `rejected.jsonl`, `passed.jsonl`; the stats record goes to
`stats.jsonl`), one JSON document per line: the normalized event, the dead-letter
`{"original", "reasons"}` form, or the passed record as it came.

`LocalStore.store(batches)` resolves True only after the lines are written and the files
fsync'd, so a chunk acked upstream is on disk. Writes from concurrent chunks are
committed together (one write and one fsync per file per round) on a private thread, so
the event loop never waits for the disk and a busy relay pays one fsync per round, not
per chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..core.jsonlines import UNWRITABLE, dumps, dumps_as_is
from ..model.encodable import encodable
from .routing import Batch, LinesBatch

log = logging.getLogger(__name__)

STATS_ROUTE = "stats"
REJECTED_FILE_ROUTE = "rejected"


def _encode(text: str) -> bytes:
    try:
        # Strings from msgpack keep undecodable bytes as surrogate escapes: write them back.
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate of another origin: keep it visible
        return text.encode("utf-8", "backslashreplace")


def json_lines(route: str, records: Iterable[Any], out: Dict[str, List[str]], warnings: List[str]) -> None:
    """Each record of `route` as one JSON line, appended to `out[file route]`: its route's
    file, or the rejected file for a record JSON cannot hold (with a warning saying so)."""
    lines = out.setdefault(route, [])
    for record in records:
        try:
            lines.append(dumps_as_is(record))
        except UNWRITABLE as exc:
            file_route, text, warning = _unwritable(route, record, exc)
            out.setdefault(file_route, []).append(text)
            if warning is not None:
                warnings.append(warning)


def _unwritable(route: str, record: Any, exc: BaseException) -> Tuple[str, str, Optional[str]]:
    """(route, line, warning) for a record plain JSON cannot hold: keys that are not text are
    made text; a record that still cannot be written becomes a dead letter with the reason,
    so one odd record never holds up the others (nor is taken for a disk error)."""
    try:
        return route, dumps_as_is(_text_keys(record)), None
    except UNWRITABLE as again:
        exc = again
    warning = (f"a record of route {route} cannot be written as JSON ({type(exc).__name__}: {exc}); "
               f"written to {REJECTED_FILE_ROUTE} as a rejection")
    return REJECTED_FILE_ROUTE, dumps({
        "original": encodable(record),
        "reasons": [{"path": "", "rule": "unwritable",
                     "message": f"cannot be written as JSON: {type(exc).__name__}: {exc}"}],
    }), warning


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else _key_text(k)): _text_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text_keys(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "backslashreplace")
    if isinstance(key, (int, float, bool)) or key is None:
        return json.dumps(key)
    return repr(key)


class LocalStoreError(Exception):
    """The data directory cannot be created or written."""


class LocalStore:
    """Append-only JSON-lines files, one per route, under `data_dir`."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise LocalStoreError(f"cannot create data directory {data_dir!r}: {exc.strerror}") from None
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise LocalStoreError(f"data directory {data_dir!r} is not writable")
        self._files: Dict[str, int] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="atnorm-store")
        self._waiting: List[Tuple[List[Batch], "asyncio.Future[bool]"]] = []
        self._committer: Optional["asyncio.Task[None]"] = None
        self.last_error: Optional[str] = None
        self.records_written = 0

    def path(self, route: str) -> str:
        """The file that holds `route`'s records."""
        return os.path.join(self.data_dir, f"{route}.jsonl")

    async def store(self, batches: List[Batch]) -> bool:
        """True once every record of `batches` is written and synced; False on a disk error
        (then nothing of this call is acknowledged, and a resend may repeat some lines)."""
        if not batches:
            return True
        future: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        self._waiting.append((batches, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_rounds())
        return await asyncio.shield(future)

    async def _commit_rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            round_, self._waiting = self._waiting, []
            try:
                await loop.run_in_executor(self._executor, self._write, [b for b, _ in round_])
                ok = True
            except Exception as exc:  # the disk's failure must not stall the relay
                ok = False
                if isinstance(exc, OSError):
                    message = f"cannot write to {self.data_dir!r}: {exc.strerror or exc}"
                else:  # not the disk: say what it was
                    message = f"writing records to {self.data_dir!r} failed: {type(exc).__name__}: {exc}"
                if message != self.last_error:
                    log.error("%s; records are left unacknowledged for their senders to resend", message)
                self.last_error = message
            else:
                if self.last_error is not None:
                    log.info("writing to %r works again", self.data_dir)
                self.last_error = None
            for _, future in round_:
                if not future.done():
                    future.set_result(ok)

    def _write(self, rounds: Iterable[List[Batch]]) -> None:
        """On the store thread: encode, append and fsync every touched file."""
        lines: Dict[str, List[str]] = {}
        count = 0
        for batches in rounds:
            for batch in batches:
                warnings: List[str]
                if isinstance(batch, LinesBatch):  # written as lines where it was decided
                    for route, text in batch.lines.items():
                        lines.setdefault(route, []).append(text)
                    warnings = batch.warnings
                else:
                    warnings = []
                    json_lines(batch.route, (entry.record for entry in batch.records()), lines, warnings)
                for warning in warnings:
                    log.warning("%s", warning)
                count += batch.count
        sizes: Dict[int, int] = {}
        try:
            for route, texts in lines.items():
                if not texts:  # no records for it (none given, or all went to the rejected file)
                    continue
                fd = self._file(route)
                sizes[fd] = os.fstat(fd).st_size
                view = memoryview(_encode("\n".join(texts) + "\n"))
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            for fd in sizes:
                os.fsync(fd)
        except OSError:
            # Cut any half-written line off, so the file stays one JSON document per line.
            for fd, size in sizes.items():
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
            raise
        self.records_written += count

    def _file(self, route: str) -> int:
        fd = self._files.get(route)
        if fd is None:
            created = not os.path.exists(self.path(route))
            fd = os.open(self.path(route), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if created:  # the new directory entry must be durable too
                directory = os.open(self.data_dir, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
            self._files[route] = fd
        return fd

    def reopen(self) -> None:
        """Close the files after the writes queued so far; the next write opens each file by
        name again (creating it), so records go to a new file once logrotate moved the old."""
        try:
            self._executor.submit(self._close_files)  # the store thread: in order with the writes
        except RuntimeError:  # closed already
            pass

    async def close(self) -> None:
        """Finish pending writes, then close the files."""
        if self._committer is not None:
            await self._committer
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_files)
        self._executor.shutdown(wait=True)

    def _close_files(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
