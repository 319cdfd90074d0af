"""The /batches routes: submit a background job (a JSONL body or a multipart file), follow its
progress, fetch its results (JSONL or Parquet) and cancel it. The work happens in `iei.jobs`; this
module only reads requests and renders answers."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.response import Stream

from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.errors import NotFound, Unhealthy, UnsupportedMediaType, ValidationFailed
from iei.jobs.results import as_lines, require_parquet, write_parquet
from iei.jobs.runner import JobRunner, JobStatus
from iei.jobs.store import AsyncJobStore, JobResult, StoreBusy
from iei.server.inputs import media_type, read_options
from iei.server.openapi import error_responses
from iei.server.routes import AppState
from iei.server.schemas import (
    BatchJob,
    BatchList,
    BatchProgress,
    BatchResultError,
    BatchResultLine,
    ErrorBody,
)

log = logging.getLogger("iei.server")

JSON = "application/json"
JSONL = "application/jsonl"
PARQUET = "application/vnd.apache.parquet"
JSONL_TYPES = (JSONL, "application/x-ndjson", "application/jsonlines", "application/x-jsonlines")
_LIST_LIMIT = 1000


class BatchJobs:
    """The job runner as the handlers see it: set while the server runs, else why there is none."""

    def __init__(self) -> None:
        self.runner: JobRunner | None = None
        self.problem = "batch jobs are not started yet"

    def require(self) -> JobRunner:
        if self.runner is None:
            raise Unhealthy(self.problem)
        return self.runner


@asynccontextmanager
async def running_batch_jobs(jobs: BatchJobs, engine: EmbeddingEngine, settings: Settings) -> AsyncIterator[None]:
    """Open the job database and run jobs (resuming unfinished ones) while the server runs. A
    database that cannot be opened turns jobs off (503 on /batches, logged), not the server."""
    store = AsyncJobStore(settings.batch_db_path)
    try:
        await store.open()
    except StoreBusy as e:
        log.warning("batch jobs are off: %s", e)
        jobs.problem = "batch jobs are unavailable: the server could not open its job database (see its log)"
        yield
        return
    runner = JobRunner(engine, store)
    await runner.start()
    jobs.runner = runner
    log.info("batch jobs on (database %s)", store.path)
    try:
        yield
    finally:
        jobs.runner, jobs.problem = None, "the server is shutting down"
        await runner.close()
        await store.close()


# -- reading and rendering ----------------------------------------------------------------------

async def _read_job(request: Request) -> tuple[bytes, bool, int | None]:
    """The JSONL body (raw, or the multipart part `file`) and the options."""
    media = media_type(request)
    if media in JSONL_TYPES:
        normalize, dimensions = read_options(request.query_params, {})
        return await request.body(), normalize, dimensions
    if media == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("the multipart body needs a file part named `file` holding the JSONL")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        normalize, dimensions = read_options(request.query_params, fields)
        return await upload.read(), normalize, dimensions
    raise UnsupportedMediaType(f"unsupported Content-Type {media!r}: send the JSONL as application/jsonl "
                               "(or application/x-ndjson), or as the multipart/form-data file part `file`")


def _job_body(status: JobStatus) -> BatchJob:
    job = status.job
    return BatchJob(id=job.id, status=job.status, progress=BatchProgress(job.total, job.done, job.errors),
                    images_per_s=status.images_per_s, eta_s=status.eta_s, normalize=job.normalize,
                    dimensions=job.dimensions, created_at=job.created_at, started_at=job.started_at,
                    finished_at=job.finished_at, results_url=f"/batches/{job.id}/results")


def _json(body: msgspec.Struct, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=msgspec.json.encode(body), status_code=status, media_type=JSON, headers=headers)


def _render_lines(chunk: list[JobResult]) -> bytes:
    lines = [BatchResultLine(line.index, embedding=line.embedding) if line.error is None else
             BatchResultLine(line.index, error=BatchResultError(line.error, line.error_type or "Internal"))
             for line in as_lines(chunk)]
    return b"".join(msgspec.json.encode(line) + b"\n" for line in lines)


async def _jsonl_lines(chunks: AsyncIterator[list[JobResult]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:  # rendered off the loop: a chunk is up to 1024 vectors
        yield await asyncio.to_thread(_render_lines, chunk)


async def _file_then_delete(path: Path) -> AsyncIterator[bytes]:
    try:
        f = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                yield chunk
        finally:
            f.close()
    finally:
        path.unlink(missing_ok=True)


def _wants_parquet(request: Request) -> bool:
    chosen = request.query_params.get("format")
    if chosen is None:
        return PARQUET in request.headers.get("accept", "")
    if chosen not in ("jsonl", "parquet"):
        raise ValidationFailed(f"`format` must be jsonl or parquet, got {chosen!r}")
    return chosen == "parquet"


async def _parquet_response(runner: JobRunner, job_id: str) -> Response:
    require_parquet()
    handle, name = tempfile.mkstemp(prefix="iei-batch-", suffix=".parquet")
    os.close(handle)
    path = Path(name)
    try:
        await write_parquet(runner.results(job_id), path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Stream(_file_then_delete(path), media_type=PARQUET,
                  headers={"content-disposition": f'attachment; filename="{job_id}.parquet"'})


# -- handlers -----------------------------------------------------------------------------------

_ERRORS = {**error_responses(), 404: ResponseSpec(data_container=ErrorBody, description="no such batch job"),
           503: ResponseSpec(data_container=ErrorBody, description="not ready, shutting down, or the job database "
                                                                   "could not be opened")}
_JOB_RESPONSES = {200: ResponseSpec(data_container=BatchJob, description="the job"), **_ERRORS}


def build_batch_handlers(state: AppState, jobs: BatchJobs) -> list[HTTPRouteHandler]:
    async def answer(request: Request, work: Callable[[JobRunner], Awaitable[Response]]) -> Response:
        """Auth, then `work`; what they raise is answered by the app's exception handlers."""
        state.check_api_key(request)
        return await work(jobs.require())

    async def existing(runner: JobRunner, job_id: str) -> JobStatus:
        status = await runner.status(job_id)
        if status is None:
            raise NotFound(f"no batch job {job_id!r}")
        return status

    @post("/batches", status_code=202, summary="Submit a background batch job",
          description="Body: JSONL, one image per line, `{\"image\": \"<base64>\"}` or `{\"path\": \"...\"}` (with "
                      "--batch-input-root), as application/jsonl (or application/x-ndjson) or as the multipart file "
                      "part `file`; `normalize` and `dimensions` as query parameters or form fields. Answers 202 "
                      "with the queued job at once.",
          responses={202: ResponseSpec(data_container=BatchJob, description="the queued job"), **_ERRORS})
    async def submit(request: Request) -> Response:
        async def work(runner: JobRunner) -> Response:
            body, normalize, dimensions = await _read_job(request)
            status = await runner.submit(body, normalize=normalize, dimensions=dimensions)
            return _json(_job_body(status), 202, {"location": f"/batches/{status.job.id}"})

        return await answer(request, work)

    @get("/batches", summary="List batch jobs, newest first",
         responses={200: ResponseSpec(data_container=BatchList, description="jobs"), **_ERRORS})
    async def list_jobs(request: Request) -> Response:
        async def work(runner: JobRunner) -> Response:
            text = request.query_params.get("limit", "100")
            if not text.isdigit() or not 1 <= int(text) <= _LIST_LIMIT:
                raise ValidationFailed(f"`limit` must be an integer between 1 and {_LIST_LIMIT}, got {text!r}")
            return _json(BatchList([_job_body(s) for s in await runner.statuses(int(text))]))

        return await answer(request, work)

    @get("/batches/{job_id:str}", summary="A batch job's status and progress", responses=_JOB_RESPONSES)
    async def job_status(request: Request, job_id: str) -> Response:
        async def work(runner: JobRunner) -> Response:
            return _json(_job_body(await existing(runner, job_id)))

        return await answer(request, work)

    @get("/batches/{job_id:str}/results", summary="A batch job's results so far, in index order",
         description="JSONL (default): `{\"index\": i, \"embedding\": [...]}` or `{\"index\": i, \"error\": {\"message\", "
                     "\"error_type\"}}` per finished input. `?format=parquet` (or `Accept: application/vnd.apache.parquet`): "
                     "a Parquet file with columns index, embedding, error_type, error.",
         responses={200: ResponseSpec(data_container=str, media_type=JSONL, description="one JSON object per line"),
                    **_ERRORS, 501: ResponseSpec(data_container=ErrorBody, description="Parquet asked, no pyarrow")})
    async def job_results(request: Request, job_id: str) -> Response:
        async def work(runner: JobRunner) -> Response:
            parquet = _wants_parquet(request)
            await existing(runner, job_id)
            if parquet:
                return await _parquet_response(runner, job_id)
            return Stream(_jsonl_lines(runner.results(job_id)), media_type=JSONL)

        return await answer(request, work)

    @delete("/batches/{job_id:str}", status_code=200, summary="Cancel a batch job",
            description="A queued or running job becomes `cancelled` (results finished so far are kept); a job that "
                        "already ended is left as it is. Answers the job either way.",
            responses=_JOB_RESPONSES)
    async def cancel(request: Request, job_id: str) -> Response:
        async def work(runner: JobRunner) -> Response:
            status = await runner.cancel(job_id)
            if status is None:
                raise NotFound(f"no batch job {job_id!r}")
            return _json(_job_body(status))

        return await answer(request, work)

    return [submit, list_jobs, job_status, job_results, cancel]
