"""JobStore: background jobs, their inputs and their results in one SQLite file.

Tables: `jobs` (one row per job: status, counters, options, timestamps), `inputs` (the images still
to embed: base64 text or a path; deleted when the job ends) and `results` (one row per finished
input: a little-endian float32 vector, or an error). Results are committed in small transactions, so
a server killed mid-job loses none it had written, and a resumed job skips them.

Owner: one thread. `JobStore` is synchronous and bound to the thread that opened it (sqlite3's own
check); `AsyncJobStore` runs every call on one dedicated thread, so the event loop never waits on disk.
A lock file next to the database keeps a second server from running the same jobs.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

Status = Literal["queued", "running", "completed", "failed", "cancelled"]
UNFINISHED: tuple[Status, ...] = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    normalize INTEGER NOT NULL,
    dimensions INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,  -- image (base64 text) | path
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    vector BLOB,  -- little-endian float32, NULL on error
    error_type TEXT,
    error TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""


class StoreBusy(Exception):
    """The database is in use by another server, or cannot be opened; the message says which."""


class JobRecord(NamedTuple):
    id: str
    status: Status
    total: int
    done: int  # inputs with a result (vector or error)
    errors: int
    normalize: bool
    dimensions: int | None
    created_at: float  # Unix time, seconds
    started_at: float | None
    finished_at: float | None


class JobInput(NamedTuple):
    index: int
    kind: Literal["image", "path"]
    value: str


class JobResult(NamedTuple):
    index: int
    vector: bytes | None  # little-endian float32
    error_type: str | None
    error: str | None
    finished_at: float


_JOB_COLUMNS = "id, status, total, done, errors, normalize, dimensions, created_at, started_at, finished_at"


def _record(row: tuple) -> JobRecord:
    return JobRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), *row[6:])


class JobStore:
    def __init__(self, path: str | os.PathLike) -> None:
        """Open (creating) the database. Raises StoreBusy."""
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(f"{path}.lock", "a")  # noqa: SIM115  (held open: the lock lives with it)
        except OSError as e:
            raise StoreBusy(f"cannot open the batch database {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreBusy(f"the batch database {path} is in use by another server") from None
        try:
            self._db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a process crash
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            self._lock.close()
            raise StoreBusy(f"cannot open the batch database {path}: {e}") from None
        self.path = path
        #: result rows written by this store object (tests use it to see that nothing is recomputed)
        self.results_written = 0

    def close(self) -> None:
        self._db.close()
        self._lock.close()

    def _transaction(self):
        return _Transaction(self._db)

    # -- jobs --------------------------------------------------------------------------------

    def create(self, job_id: str, inputs: list[JobInput], *, normalize: bool, dimensions: int | None,
               now: float | None = None) -> JobRecord:
        """Store a queued job and its inputs (one transaction)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, 'queued', ?, 0, 0, ?, ?, ?, NULL, NULL)",
                       (job_id, len(inputs), int(normalize), dimensions, now))
            db.executemany("INSERT INTO inputs (job_id, idx, kind, value) VALUES (?, ?, ?, ?)",
                           ((job_id, *item) for item in inputs))
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def list(self, limit: int = 100) -> list[JobRecord]:
        """The newest `limit` jobs, newest first."""
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                (limit,))
        return [_record(row) for row in rows]

    def unfinished(self) -> list[str]:
        """Ids of queued and running jobs, oldest first (what a restarted server resumes)."""
        rows = self._db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running') "
                                "ORDER BY created_at, rowid")
        return [row[0] for row in rows]

    def mark_running(self, job_id: str, now: float | None = None) -> bool:
        """queued (or running, on resume) -> running; False if the job is finished or unknown."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) "
                                "WHERE id = ? AND status IN ('queued', 'running')", (now, job_id))
        return cursor.rowcount == 1

    def finish(self, job_id: str, status: Status, now: float | None = None) -> JobRecord | None:
        """An unfinished job -> `status` (completed, failed or cancelled); its remaining inputs are
        deleted, its results kept. Returns the job as it now is (None if unknown); a job already
        finished is left as it was."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute("UPDATE jobs SET status = ?, finished_at = ? "
                                "WHERE id = ? AND status IN ('queued', 'running')", (status, now, job_id))
            if cursor.rowcount:
                db.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        return self.get(job_id)

    # -- inputs and results ------------------------------------------------------------------

    def pending_inputs(self, job_id: str, after: int = -1, limit: int = 256) -> list[JobInput]:
        """Inputs without a result, index above `after`, in index order."""
        rows = self._db.execute(
            "SELECT idx, kind, value FROM inputs i WHERE job_id = ? AND idx > ? AND NOT EXISTS "
            "(SELECT 1 FROM results r WHERE r.job_id = i.job_id AND r.idx = i.idx) ORDER BY idx LIMIT ?",
            (job_id, after, limit))
        return [JobInput(*row) for row in rows]

    def add_results(self, job_id: str, results: list[JobResult]) -> None:
        """Store finished inputs and count them on the job, in one transaction."""
        if not results:
            return
        with self._transaction() as db:
            db.executemany("INSERT INTO results (job_id, idx, vector, error_type, error, finished_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", ((job_id, *r) for r in results))
            errors = sum(r.vector is None for r in results)
            db.execute("UPDATE jobs SET done = done + ?, errors = errors + ? WHERE id = ?",
                       (len(results), errors, job_id))
        self.results_written += len(results)

    def results(self, job_id: str, after: int = -1, limit: int = 1024) -> list[JobResult]:
        """Finished inputs with index above `after`, in index order."""
        rows = self._db.execute("SELECT idx, vector, error_type, error, finished_at FROM results "
                                "WHERE job_id = ? AND idx > ? ORDER BY idx LIMIT ?", (job_id, after, limit))
        return [JobResult(*row) for row in rows]


class _Transaction:
    """`with`: BEGIN ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, error, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class AsyncJobStore:
    """A `JobStore` driven from the event loop: each method runs on the store's one thread."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iei-jobstore")
        self._store: JobStore | None = None

    async def _call(self, function, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(function, *args, **kwargs))

    async def open(self) -> None:
        """Raises StoreBusy."""
        try:
            self._store = await self._call(JobStore, self.path)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    async def close(self) -> None:
        if self._store is not None:
            await self._call(self._store.close)
            self._store = None
        self._thread.shutdown(wait=True)

    # One coroutine per JobStore method (see there for what each does).

    async def create(self, job_id: str, inputs: list[JobInput], *, normalize: bool,
                     dimensions: int | None) -> JobRecord:
        return await self._call(self._sync.create, job_id, inputs, normalize=normalize, dimensions=dimensions)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._call(self._sync.get, job_id)

    async def list(self, limit: int = 100) -> list[JobRecord]:
        return await self._call(self._sync.list, limit)

    async def unfinished(self) -> list[str]:
        return await self._call(self._sync.unfinished)

    async def mark_running(self, job_id: str) -> bool:
        return await self._call(self._sync.mark_running, job_id)

    async def finish(self, job_id: str, status: Status) -> JobRecord | None:
        return await self._call(self._sync.finish, job_id, status)

    async def pending_inputs(self, job_id: str, after: int = -1, limit: int = 256) -> list[JobInput]:
        return await self._call(self._sync.pending_inputs, job_id, after, limit)

    async def add_results(self, job_id: str, results: list[JobResult]) -> None:
        await self._call(self._sync.add_results, job_id, results)

    async def results(self, job_id: str, after: int = -1, limit: int = 1024) -> list[JobResult]:
        return await self._call(self._sync.results, job_id, after, limit)

    @property
    def _sync(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("the job store is not open")
        return self._store
