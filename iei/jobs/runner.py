"""JobRunner: runs stored batch jobs one at a time, oldest first, through the engine's low-priority lane.

Online requests come first, at every stage a job image passes through:
- a job image starts only while no request is in flight (`online_idle`), and the batcher sends job
  images to the model only while none is, in batches of their own, to an idle model
  (`DynamicBatcher`'s background lane);
- job images are decoded by the pool's background workers (`--batch-job-workers`, nice 19): a
  request never waits behind a job image in a worker, and the OS gives the cores to request work first;
- only a few job images (`background_slots`) hold a slab slot at once, so job batches stay small and
  an online image that finds the model busy with one waits only briefly.

Each finished image (vector, or per-image error) is committed to the store within `_FLUSH_S`, so a
server killed mid-job resumes it at the next start and recomputes only what was not yet committed.

Owner: the event loop (one task runs jobs; `submit`, `cancel` and `status` are called by handlers).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import NamedTuple

import numpy as np

from iei.engine import EmbeddingEngine, ImagePayload, background_slots, finish_vectors
from iei.errors import IEIError, InputError, Unhealthy
from iei.jobs.inputs import parse_job_lines, read_path_input
from iei.jobs.store import AsyncJobStore, JobInput, JobRecord, JobResult

log = logging.getLogger("iei.jobs")

_CHUNK = 256  # inputs read from the store at a time
_FLUSH_S = 0.2  # results are committed at least this often...
_FLUSH_ROWS = 64  # ...or as soon as this many are waiting
_RETRY_S = 1.0  # pause before retrying a job whose run stopped on an unhealthy engine


class JobStatus(NamedTuple):
    job: JobRecord
    images_per_s: float | None  # over the job's current run, or its whole run once finished
    eta_s: float | None  # while unfinished and a rate is known


class JobRunner:
    def __init__(self, engine: EmbeddingEngine, store: AsyncJobStore) -> None:
        self._engine = engine
        self._store = store
        settings = engine.settings
        self._input_root = settings.batch_input_root
        self._max_inputs = settings.batch_max_inputs
        self._holding_slots = asyncio.Semaphore(background_slots(settings))
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # ids of jobs to run, in order
        self._task: asyncio.Task | None = None
        self._current: tuple[str, asyncio.Task] | None = None  # the job being run
        self._live: dict[str, tuple[float, int]] = {}  # running job -> (its run's start, done at start)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Queue the jobs a previous server left unfinished, then start running jobs."""
        unfinished = await self._store.unfinished()
        if unfinished:
            log.info("resuming %d unfinished batch job(s)", len(unfinished))
        for job_id in unfinished:
            self._queue.put_nowait(job_id)
        self._task = asyncio.get_running_loop().create_task(self._run_jobs(), name="iei-jobs")

    async def close(self) -> None:
        """Stop; a running job keeps its committed results and stays `running`, to be resumed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- called by the HTTP handlers ----------------------------------------------------------

    async def submit(self, body: bytes, *, normalize: bool, dimensions: int | None) -> JobStatus:
        """Validate a JSONL body (cheaply, off the loop), store the job and queue it. Raises
        ValidationFailed naming the first bad line, or the option at fault."""
        self._engine.check_request(1, dimensions)
        inputs = await asyncio.to_thread(parse_job_lines, body, max_inputs=self._max_inputs,
                                         paths_allowed=self._input_root is not None)
        job = await self._store.create(f"batch_{uuid.uuid4().hex}", inputs, normalize=normalize,
                                       dimensions=dimensions)
        self._queue.put_nowait(job.id)
        log.info("batch job %s queued: %d inputs", job.id, job.total)
        return self._with_rate(job)

    async def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued or running job (its finished results stay); a finished job is left as it
        is. None if unknown."""
        job = await self._store.finish(job_id, "cancelled")
        if self._current is not None and self._current[0] == job_id:
            self._current[1].cancel()
        return None if job is None else self._with_rate(job)

    async def status(self, job_id: str) -> JobStatus | None:
        job = await self._store.get(job_id)
        return None if job is None else self._with_rate(job)

    async def statuses(self, limit: int) -> list[JobStatus]:
        return [self._with_rate(job) for job in await self._store.list(limit)]

    async def results(self, job_id: str) -> AsyncIterator[list[JobResult]]:
        """The job's finished inputs in index order, a chunk at a time (whatever is committed so far;
        see `iei.jobs.results` for turning them into lines or Parquet)."""
        after = -1
        while chunk := await self._store.results(job_id, after):
            after = chunk[-1].index
            yield chunk

    def _with_rate(self, job: JobRecord) -> JobStatus:
        rate = None
        if job.id in self._live:
            started, done_at_start = self._live[job.id]
            elapsed = time.monotonic() - started
            rate = (job.done - done_at_start) / elapsed if elapsed > 0 and job.done > done_at_start else None
        elif job.finished_at is not None and job.started_at is not None and job.finished_at > job.started_at:
            rate = job.done / (job.finished_at - job.started_at)
        unfinished = job.status in ("queued", "running")
        eta = (job.total - job.done) / rate if unfinished and rate else None
        return JobStatus(job, rate, eta)

    # -- the runner task ----------------------------------------------------------------------

    async def _run_jobs(self) -> None:
        while True:
            job_id = await self._queue.get()
            task = asyncio.get_running_loop().create_task(self._run_job(job_id), name=f"iei-job-{job_id}")
            self._current = (job_id, task)
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._current = None
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, Unhealthy):
                log.error("batch job %s stopped unexpectedly", job_id, exc_info=error)
            if isinstance(error, Unhealthy) and not self._engine.draining:
                await asyncio.sleep(_RETRY_S)  # e.g. the model process restarting: try again shortly
                self._queue.put_nowait(job_id)

    async def _run_job(self, job_id: str) -> None:
        if not await self._store.mark_running(job_id):
            return  # cancelled while queued
        job = await self._store.get(job_id)
        assert job is not None
        self._live[job_id] = (time.monotonic(), job.done)
        writer = _ResultWriter(self._store, job_id)
        try:
            await self._embed_pending(job, writer)
            await writer.close()
            await self._store.finish(job_id, "completed")
            log.info("batch job %s finished", job_id)
        except (asyncio.CancelledError, Unhealthy):
            raise  # cancelled, shutting down or engine down: the job stays resumable
        except Exception:
            log.exception("batch job %s failed", job_id)
            await self._store.finish(job_id, "failed")
        finally:
            await asyncio.shield(writer.close())
            self._live.pop(job_id, None)

    async def _embed_pending(self, job: JobRecord, writer: _ResultWriter) -> None:
        """Embed every input without a result, keeping the job's images in flight bounded."""
        tasks: set[asyncio.Task] = set()
        failure: list[BaseException] = []

        def finished(task: asyncio.Task) -> None:
            tasks.discard(task)
            self._holding_slots.release()
            if not task.cancelled() and task.exception() is not None:
                failure.append(task.exception())  # type: ignore[arg-type]

        try:
            after = -1
            while chunk := await self._store.pending_inputs(job.id, after, _CHUNK):
                after = chunk[-1].index
                for item in chunk:
                    await self._holding_slots.acquire()
                    await self._engine.online_idle.wait()  # a job image starts only between requests
                    if failure:
                        self._holding_slots.release()
                        raise failure[0]
                    task = asyncio.ensure_future(self._embed_input(item, job, writer))
                    tasks.add(task)
                    task.add_done_callback(finished)
            while tasks:
                await asyncio.wait(set(tasks))
            if failure:
                raise failure[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _embed_input(self, item: JobInput, job: JobRecord, writer: _ResultWriter) -> None:
        """Embed one input and hand its result to the writer. Per-image failures become error
        results; Unhealthy (shutting down, batcher gone) propagates and stops the run."""
        try:
            payload = await self._payload(item)
            vector = await self._engine.embed_in_background(payload)
        except Unhealthy:
            raise
        except IEIError as e:
            writer.add(JobResult(item.index, None, e.error_type, e.message, time.time()))
            return
        vector = finish_vectors(vector[None, :], job.normalize, job.dimensions)[0]
        writer.add(JobResult(item.index, np.ascontiguousarray(vector, "<f4").tobytes(), None, None, time.time()))

    async def _payload(self, item: JobInput) -> ImagePayload:
        if item.kind == "image":
            return ImagePayload(item.value, "base64")
        if self._input_root is None:
            raise InputError("path inputs are disabled on this server (it must be started with --batch-input-root)")
        return ImagePayload(await asyncio.to_thread(read_path_input, item.value, self._input_root), "raw")


class _ResultWriter:
    """Commits a job's results in small transactions: every `_FLUSH_S`, or once `_FLUSH_ROWS` wait.
    Owned by the job's task (event loop); the commits run on the store's thread."""

    def __init__(self, store: AsyncJobStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._rows: list[JobResult] = []
        self._due = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    def add(self, row: JobResult) -> None:
        """Raises what stopped the periodic commits (the store failing), so the job fails with it."""
        if self._flusher.done() and not self._flusher.cancelled() and self._flusher.exception() is not None:
            raise self._flusher.exception()  # type: ignore[misc]
        self._rows.append(row)
        if len(self._rows) >= _FLUSH_ROWS:
            self._due.set()

    async def _flush_periodically(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), _FLUSH_S)
            except TimeoutError:
                pass
            self._due.clear()
            await self.flush()

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        if rows:  # shielded: rows taken must reach the store even if the caller is cancelled
            await asyncio.shield(self._store.add_results(self._job_id, rows))

    async def close(self) -> None:
        """Stop flushing periodically and commit what is left (idempotent)."""
        self._flusher.cancel()
        await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
