"""A bounded, durable, in-order store for batches the downstream has not acknowledged yet.

Each row is one batch for one tag: the already-packed msgpack entries (the body of a
PackedForward message) and how many entries it holds. Rows are numbered by an
AUTOINCREMENT sequence, so order survives restarts and a number is never reused.

The store is SQLite (stdlib `sqlite3`) in WAL mode. Durability is a choice of `sync`:

* ``"normal"`` (default; SQLite ``synchronous=NORMAL`` with WAL): a commit has been
  written into the WAL file by the time `append` returns, so it lives in the kernel's page
  cache and survives the process being killed (``kill -9``, OOM killer, crash). It does
  not survive power loss or a kernel panic until the next checkpoint syncs the WAL.
  This is the default because it is what the relay's promise needs (an upstream chunk is
  acked once its records are here, and the process dying must not lose them), it costs
  no fsync per batch, and it matches Fluent Bit's default ``storage.sync normal``.
* ``"full"`` (``synchronous=FULL``): the WAL is fsynced on every commit, so an append that
  returned also survives power loss. Each append then waits for the disk (about a
  millisecond on SSD, far more on network disks); call the spool from a worker thread
  (`asyncio.to_thread`) if that would stall an event loop.

Appending never drops anything: when the spool is full, `append` raises `SpoolFull` and
the caller must stop acknowledging its own senders until `remove` makes room.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

try:  # POSIX advisory lock; keeps two relays from draining one spool
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}
SCHEMA_VERSION = 1
# Keep the WAL file from staying huge after a big backlog has been drained.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# SQLite's default limit on host parameters is 999 in older builds.
_REMOVE_GROUP = 500


class SpoolError(Exception):
    """The spool cannot be opened or used (bad path, not a spool file, locked, disk error)."""


class SpoolFull(SpoolError):
    """Appending this batch would exceed the spool's byte or record bound."""


@dataclass(frozen=True)
class QuarantinedChunk:
    """A batch the downstream kept refusing, with the downstream's last error."""

    id: int
    tag: str
    count: int
    size: int
    created: float  # wall-clock seconds when first stored
    quarantined: float
    attempts: int
    error: str
    resend: bool  # a re-send was asked for and a running relay has not picked it up yet


@dataclass(frozen=True)
class SpooledBatch:
    """One stored batch: `payload` is the packed msgpack entries, `count` how many."""

    seq: int
    tag: str
    payload: bytes
    count: int
    created: float  # wall-clock seconds when appended


class Spool:
    """SQLite-backed FIFO of (tag, packed entries) batches with byte and record bounds.

    Safe to call from several threads (one lock around the connection). When `stats`
    (a `RelayStats`) is given, its `spool_depth_*` gauges are kept current.
    """

    def __init__(self, path: str, *, max_bytes: int, max_records: Optional[int] = None,
                 sync: str = "normal", stats: Any = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if max_records is not None and max_records <= 0:
            raise ValueError("max_records must be positive")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {sync!r}")
        self.path = path
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.sync = sync
        self._stats = stats
        self._lock = threading.Lock()
        self._lock_file = self._take_lock(path)
        try:
            self._db = self._open(path, SYNC_MODES[sync])
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(count), 0), COALESCE(SUM(LENGTH(payload)), 0) "
                "FROM batches").fetchone()
        except sqlite3.Error as exc:
            self._release_lock()
            raise SpoolError(f"{path}: cannot open spool: {exc}") from None
        except SpoolError:
            self._release_lock()
            raise
        self._batches, self._records, self._bytes = int(row[0]), int(row[1]), int(row[2])
        self._oldest_created: Optional[float] = None
        self._refresh_oldest()
        self._publish()

    # -- opening -----------------------------------------------------------------

    @staticmethod
    def _take_lock(path: str) -> Any:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            handle = open(path + ".lock", "a+b")
        except OSError as exc:
            raise SpoolError(f"{path}: cannot create spool: {exc.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise SpoolError(f"{path}: spool is in use by another process") from None
        return handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    @staticmethod
    def _open(path: str, synchronous: str) -> sqlite3.Connection:
        # isolation_level=None: autocommit; each INSERT is its own atomic transaction and
        # multi-statement work uses explicit BEGIN IMMEDIATE.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"{path}: the filesystem does not support SQLite WAL mode "
                                 f"(got {mode!r}); put the spool on a local disk")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SpoolError(f"{path}: spool format {version} is not supported "
                                 f"(expected {SCHEMA_VERSION})")
            db.execute(
                "CREATE TABLE IF NOT EXISTS batches ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " tag TEXT NOT NULL,"
                " count INTEGER NOT NULL,"
                " created REAL NOT NULL,"
                " payload BLOB NOT NULL)")
            # Chunks the downstream kept refusing, kept with its error until an operator
            # re-sends or drops them (`atnorm quarantine`); `resend` = 1 asks a running relay
            # to move the row back into the queue.
            db.execute(
                "CREATE TABLE IF NOT EXISTS quarantine ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " tag TEXT NOT NULL,"
                " count INTEGER NOT NULL,"
                " created REAL NOT NULL,"
                " quarantined REAL NOT NULL,"
                " attempts INTEGER NOT NULL,"
                " error TEXT NOT NULL,"
                " resend INTEGER NOT NULL DEFAULT 0,"
                " payload BLOB NOT NULL)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    # -- the queue ---------------------------------------------------------------

    def append(self, tag: str, entries_payload: bytes, count: int) -> int:
        """Store one batch atomically and return its sequence number.

        Raises `SpoolFull` (nothing stored) when the batch would exceed `max_bytes` or
        `max_records`; a batch larger than `max_bytes` on its own can never fit.
        """
        size = len(entries_payload)
        with self._lock:
            self._check_open()
            if self._bytes + size > self.max_bytes:
                raise SpoolFull(f"spool full: {self._bytes} + {size} bytes would exceed "
                                f"max_bytes={self.max_bytes}")
            if self.max_records is not None and self._records + count > self.max_records:
                raise SpoolFull(f"spool full: {self._records} + {count} records would exceed "
                                f"max_records={self.max_records}")
            created = time.time()
            try:
                cursor = self._db.execute(
                    "INSERT INTO batches (tag, count, created, payload) VALUES (?, ?, ?, ?)",
                    (tag, count, created, sqlite3.Binary(entries_payload)))
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot append: {exc}") from None
            seq = cursor.lastrowid
            assert seq is not None  # set by every successful INSERT
            self._batches += 1
            self._records += count
            self._bytes += size
            if self._oldest_created is None:
                self._oldest_created = created
            self._publish()
            return seq

    def peek(self, limit: int, *, max_bytes: Optional[int] = None,
             after: int = 0) -> List[SpooledBatch]:
        """Up to `limit` oldest batches (with seq > `after`), in order, without removing them.

        With `max_bytes`, stop once the returned payloads reach that many bytes (at least
        one batch is always returned when any is stored).
        """
        with self._lock:
            self._check_open()
            try:
                cursor = self._db.execute(
                    "SELECT seq, tag, payload, count, created FROM batches "
                    "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
                batches: List[SpooledBatch] = []
                total = 0
                for seq, tag, payload, count, created in cursor:
                    batches.append(SpooledBatch(seq, tag, bytes(payload), count, created))
                    total += len(payload)
                    if max_bytes is not None and total >= max_bytes:
                        break
                cursor.close()
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot read: {exc}") from None
            return batches

    def remove(self, seqs: Iterable[int]) -> None:
        """Delete the batches with these sequence numbers (unknown numbers are ignored)."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    batches = records = size = 0
                    for start in range(0, len(wanted), _REMOVE_GROUP):
                        group = wanted[start:start + _REMOVE_GROUP]
                        marks = ",".join("?" * len(group))
                        row = self._db.execute(
                            f"SELECT COUNT(*), COALESCE(SUM(count), 0), "
                            f"COALESCE(SUM(LENGTH(payload)), 0) FROM batches WHERE seq IN ({marks})",
                            group).fetchone()
                        self._db.execute(f"DELETE FROM batches WHERE seq IN ({marks})", group)
                        batches += row[0]
                        records += row[1]
                        size += row[2]
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot remove: {exc}") from None
            self._batches -= batches
            self._records -= records
            self._bytes -= size
            self._refresh_oldest()
            self._publish()

    # -- quarantine --------------------------------------------------------------

    def quarantine_append(self, tag: str, entries_payload: bytes, count: int, *, error: str,
                          attempts: int) -> int:
        """Keep a batch the downstream refused (it never was in the queue); returns its id.

        The quarantine is not bounded by `max_bytes`, so a refused chunk never blocks the
        queue; a disk error raises `SpoolError` (then nothing is stored).
        """
        now = time.time()
        with self._lock:
            self._check_open()
            try:
                cursor = self._db.execute(
                    "INSERT INTO quarantine (tag, count, created, quarantined, attempts, error, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tag, count, now, now, attempts, error, sqlite3.Binary(entries_payload)))
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot quarantine: {exc}") from None
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def quarantine_batch(self, seq: int, *, error: str, attempts: int) -> Optional[int]:
        """Move the queued batch `seq` into the quarantine in one transaction; its new id."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT tag, count, created, payload FROM batches WHERE seq = ?",
                                           (seq,)).fetchone()
                    if row is None:
                        self._db.execute("ROLLBACK")
                        return None
                    cursor = self._db.execute(
                        "INSERT INTO quarantine (tag, count, created, quarantined, attempts, error, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row[0], row[1], row[2], time.time(), attempts, error, row[3]))
                    self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot quarantine: {exc}") from None
            self._batches -= 1
            self._records -= int(row[1])
            self._bytes -= len(row[3])
            self._refresh_oldest()
            self._publish()
            return cursor.lastrowid

    def quarantined(self) -> List[QuarantinedChunk]:
        """Every quarantined chunk, oldest first (without payloads)."""
        with self._lock:
            self._check_open()
            return _list_quarantine(self._db)

    def requeue(self, ids: Optional[Iterable[int]] = None, *, requested_only: bool = False) -> int:
        """Move quarantined chunks back to the end of the queue; returns how many moved.

        `ids=None` means all of them; with `requested_only`, only those marked for re-sending
        by `atnorm quarantine resend` while the relay was running. They go through the
        normal bound: `SpoolFull` if they do not fit (nothing moved).
        """
        with self._lock:
            self._check_open()
            try:
                where, params = _quarantine_filter(ids, requested_only)
                rows = self._db.execute(
                    f"SELECT id, tag, count, created, payload FROM quarantine{where} ORDER BY id",
                    params).fetchall()
                if not rows:
                    return 0
                size = sum(len(r[4]) for r in rows)
                records = sum(int(r[2]) for r in rows)
                if self._bytes + size > self.max_bytes:
                    raise SpoolFull(f"spool full: {self._bytes} + {size} bytes of quarantined chunks would exceed "
                                    f"max_bytes={self.max_bytes}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for id_, tag, count, created, payload in rows:
                        self._db.execute("INSERT INTO batches (tag, count, created, payload) VALUES (?, ?, ?, ?)",
                                         (tag, count, created, payload))
                        self._db.execute("DELETE FROM quarantine WHERE id = ?", (id_,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot re-queue quarantined chunks: {exc}") from None
            self._batches += len(rows)
            self._records += records
            self._bytes += size
            if self._oldest_created is None:
                self._refresh_oldest()
            self._publish()
            return len(rows)

    def drop_quarantined(self, ids: Optional[Iterable[int]] = None) -> int:
        """Delete quarantined chunks for good (`ids=None`: all); returns how many."""
        with self._lock:
            self._check_open()
            where, params = _quarantine_filter(ids, False)
            try:
                return self._db.execute(f"DELETE FROM quarantine{where}", params).rowcount
            except sqlite3.Error as exc:
                raise SpoolError(f"{self.path}: cannot drop quarantined chunks: {exc}") from None

    # -- state -------------------------------------------------------------------

    @property
    def depth_batches(self) -> int:
        return self._batches

    @property
    def depth_records(self) -> int:
        return self._records

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    @property
    def oldest_age_seconds(self) -> float:
        """Seconds since the oldest stored batch was appended; 0.0 when empty."""
        oldest = self._oldest_created
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    @property
    def is_full(self) -> bool:
        """True when no more bytes (or records) fit."""
        if self._bytes >= self.max_bytes:
            return True
        return self.max_records is not None and self._records >= self.max_records

    def publish_stats(self) -> None:
        """Refresh the `RelayStats` spool gauges (the age gauge moves with the clock)."""
        self._publish()

    def close(self) -> None:
        """Close the database and release the lock; later calls raise `SpoolError`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            self._release_lock()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._db is None:
            raise SpoolError(f"{self.path}: spool is closed")

    def _refresh_oldest(self) -> None:
        row = self._db.execute("SELECT created FROM batches ORDER BY seq LIMIT 1").fetchone()
        self._oldest_created = float(row[0]) if row else None

    def _publish(self) -> None:
        stats = self._stats
        if stats is not None:
            stats.spool_depth_records = self._records
            stats.spool_depth_bytes = self._bytes
            stats.spool_oldest_age_seconds = self.oldest_age_seconds


def _quarantine_filter(ids: Optional[Iterable[int]], requested_only: bool) -> "tuple[str, list]":
    clauses, params = [], []  # type: List[str], List[Any]
    if ids is not None:
        wanted = sorted({int(i) for i in ids})
        clauses.append(f"id IN ({','.join('?' * len(wanted))})" if wanted else "0")
        params.extend(wanted)
    if requested_only:
        clauses.append("resend = 1")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _list_quarantine(db: sqlite3.Connection) -> List[QuarantinedChunk]:
    try:
        rows = db.execute("SELECT id, tag, count, LENGTH(payload), created, quarantined, attempts, error, resend "
                          "FROM quarantine ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot read the quarantine: {exc}") from None
    return [QuarantinedChunk(int(r[0]), r[1], int(r[2]), int(r[3]), float(r[4]), float(r[5]), int(r[6]), r[7],
                             bool(r[8])) for r in rows]


def open_quarantine(path: str) -> "QuarantineAccess":
    """The quarantine of the spool at `path`, for `atnorm quarantine` (relay running or not)."""
    return QuarantineAccess(path)


class QuarantineAccess:
    """Operator access to a spool's quarantine.

    When no relay holds the spool, re-sending moves chunks straight back into the queue
    (they go out when the relay next runs). When a relay is running, it holds the spool's
    lock: the chunks are only marked, and the relay moves them within a second or so.
    """

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise SpoolError(f"{path}: no spool here")
        self.path = path
        self.spool: Optional[Spool] = None
        try:
            self.spool = Spool(path, max_bytes=1 << 62)
        except SpoolError as exc:
            if "in use by another process" not in str(exc):
                raise
        if self.spool is None:
            try:
                self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
                self._db.execute("SELECT 1 FROM quarantine LIMIT 1")
            except sqlite3.Error as exc:
                raise SpoolError(f"{path}: cannot open the quarantine: {exc}") from None

    @property
    def relay_running(self) -> bool:
        return self.spool is None

    def list(self) -> List[QuarantinedChunk]:
        if self.spool is not None:
            return self.spool.quarantined()
        return _list_quarantine(self._db)

    def resend(self, ids: Optional[Iterable[int]]) -> int:
        if self.spool is not None:
            return self.spool.requeue(ids)
        where, params = _quarantine_filter(ids, False)
        try:
            return self._db.execute(f"UPDATE quarantine SET resend = 1{where}", params).rowcount
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot mark quarantined chunks: {exc}") from None

    def drop(self, ids: Optional[Iterable[int]]) -> int:
        if self.spool is not None:
            return self.spool.drop_quarantined(ids)
        where, params = _quarantine_filter(ids, False)
        try:
            return self._db.execute(f"DELETE FROM quarantine{where}", params).rowcount
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot drop quarantined chunks: {exc}") from None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        else:
            self._db.close()
