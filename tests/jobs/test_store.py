"""JobStore (SQLite): job life cycle, pending inputs, results in index order, persistence, the lock."""

from __future__ import annotations

import numpy as np
import pytest

from iei.jobs.store import AsyncJobStore, JobInput, JobResult, JobStore, StoreBusy


def inputs(count: int) -> list[JobInput]:
    return [JobInput(i, "image", f"b64-{i}") for i in range(count)]


def vector(i: int) -> bytes:
    return np.full(4, i, dtype="<f4").tobytes()


@pytest.fixture
def store(tmp_path):
    opened = JobStore(tmp_path / "jobs.sqlite3")
    yield opened
    opened.close()


def test_a_job_goes_from_queued_to_completed_with_its_counters(store):
    job = store.create("a", inputs(3), normalize=False, dimensions=2, now=10.0)
    assert (job.status, job.total, job.done, job.errors, job.normalize, job.dimensions) == ("queued", 3, 0, 0, False, 2)
    assert store.unfinished() == ["a"]
    assert store.mark_running("a", now=11.0)
    store.add_results("a", [JobResult(0, vector(0), None, None, 12.0), JobResult(2, None, "Validation", "bad", 12.0)])
    job = store.get("a")
    assert (job.status, job.started_at, job.done, job.errors) == ("running", 11.0, 2, 1)
    assert [item.index for item in store.pending_inputs("a")] == [1]
    store.add_results("a", [JobResult(1, vector(1), None, None, 13.0)])
    job = store.finish("a", "completed", now=14.0)
    assert (job.status, job.finished_at, job.done) == ("completed", 14.0, 3)
    assert store.unfinished() == [] and store.pending_inputs("a") == []  # inputs dropped once finished
    assert [r.index for r in store.results("a")] == [0, 1, 2]
    assert store.results("a", after=0, limit=1)[0].vector == vector(1)


def test_finished_jobs_stay_as_they_ended(store):
    store.create("a", inputs(2), normalize=True, dimensions=None)
    assert store.finish("a", "cancelled").status == "cancelled"
    assert store.finish("a", "completed").status == "cancelled"
    assert not store.mark_running("a")
    assert store.finish("missing", "cancelled") is None and store.get("missing") is None


def test_pending_inputs_page_from_a_cursor_and_skip_finished_ones(store):
    store.create("a", inputs(10), normalize=True, dimensions=None)
    store.add_results("a", [JobResult(i, vector(i), None, None, 1.0) for i in (0, 3, 4)])
    assert [x.index for x in store.pending_inputs("a", limit=3)] == [1, 2, 5]
    assert [x.index for x in store.pending_inputs("a", after=5, limit=10)] == [6, 7, 8, 9]


def test_everything_survives_reopening_and_jobs_list_newest_first(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    store.create("old", inputs(2), normalize=True, dimensions=None, now=1.0)
    store.create("new", inputs(1), normalize=True, dimensions=None, now=2.0)
    store.mark_running("old")
    store.add_results("old", [JobResult(1, vector(1), None, None, 5.0)])
    store.close()
    store = JobStore(path)
    assert store.unfinished() == ["old", "new"]
    assert [j.id for j in store.list()] == ["new", "old"]
    assert store.results("old") == [JobResult(1, vector(1), None, None, 5.0)]
    assert [x.index for x in store.pending_inputs("old")] == [0]
    store.close()


def test_a_second_server_cannot_open_the_same_database(store):
    with pytest.raises(StoreBusy, match="in use by another server"):
        JobStore(store.path)


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreBusy, match="cannot open the batch database"):
        JobStore(blocker / "jobs.sqlite3")


async def test_the_async_store_runs_calls_on_its_own_thread(tmp_path):
    store = AsyncJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    await store.create("a", inputs(2), normalize=True, dimensions=None)
    await store.add_results("a", [JobResult(0, vector(0), None, None, 1.0)])
    assert (await store.get("a")).done == 1
    assert [x.index for x in await store.pending_inputs("a")] == [1]
    await store.close()
