"""Output writers: Parquet dataset and NPY + index, resumable and safe against an interrupted run."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from iei.bulk.output import NpyWriter, OutputMismatch, ParquetDatasetWriter, open_writer


def vectors(n: int, dims: int = 4, start: int = 0) -> np.ndarray:
    return np.arange(start * dims, (start + n) * dims, dtype=np.float32).reshape(n, dims)


def test_format_follows_the_extension(tmp_path):
    assert isinstance(open_writer(str(tmp_path / "v.npy"), "auto", model="m", rows_per_flush=2), NpyWriter)
    assert isinstance(open_writer(str(tmp_path / "v"), "auto", model="m", rows_per_flush=2), ParquetDatasetWriter)
    assert isinstance(open_writer(str(tmp_path / "w.npy"), "parquet", model="m", rows_per_flush=2), ParquetDatasetWriter)


def test_parquet_parts_hold_path_vector_model_dims_and_resume(tmp_path):
    out = tmp_path / "out"
    writer = ParquetDatasetWriter(out, model="m", rows_per_flush=2)
    writer.add(["a", "b"], vectors(2))  # flushed: a full chunk
    writer.add(["c"], vectors(1, start=2))
    writer.close()
    table = pq.read_table(out).sort_by("path")
    assert table.column_names == ["path", "vector", "model", "dims"]
    assert table.column("path").to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), dtype=np.float32), vectors(3))
    assert set(table.column("model").to_pylist()) == {"m"} and set(table.column("dims").to_pylist()) == {4}
    assert ParquetDatasetWriter(out, model="m", rows_per_flush=2).done_paths() == {"a", "b", "c"}


def test_parquet_resume_refuses_another_model_or_width_and_drops_half_written_parts(tmp_path):
    out = tmp_path / "out"
    writer = ParquetDatasetWriter(out, model="m", rows_per_flush=8)
    writer.add(["a"], vectors(1))
    writer.close()
    (out / ".part-x-00000.parquet.tmp").write_bytes(b"half a part")
    with pytest.raises(OutputMismatch, match="holds vectors of m, not other"):
        ParquetDatasetWriter(out, model="other", rows_per_flush=8)
    again = ParquetDatasetWriter(out, model="m", rows_per_flush=8)
    assert not list(out.glob("*.tmp"))
    with pytest.raises(OutputMismatch, match="4-dimensional"):
        again.add(["b"], vectors(1, dims=8))


def test_npy_rows_match_the_index_and_resume_appends(tmp_path):
    npy = tmp_path / "v.npy"
    writer = NpyWriter(npy, model="m", rows_per_flush=2)
    writer.add(["a", "b", "c"], vectors(3))
    writer.close()
    writer = NpyWriter(npy, model="m", rows_per_flush=2)
    assert writer.done_paths() == {"a", "b", "c"}
    writer.add(["d"], vectors(1, start=3))
    writer.close()
    np.testing.assert_array_equal(np.load(npy, mmap_mode="r"), vectors(4))
    index = [json.loads(line) for line in (tmp_path / "v.index.jsonl").read_text().splitlines()]
    assert [(e["row"], e["path"], e["model"]) for e in index] == [(0, "a", "m"), (1, "b", "m"), (2, "c", "m"), (3, "d", "m")]


def test_npy_reopen_cuts_back_to_rows_the_index_vouches_for(tmp_path):
    """A run killed after appending rows but before indexing them loses those rows only."""
    npy = tmp_path / "v.npy"
    writer = NpyWriter(npy, model="m", rows_per_flush=1)
    writer.add(["a", "b"], vectors(2))
    with npy.open("ab") as f:
        f.write(vectors(1, start=9).tobytes() + b"\x00\x01")  # unindexed rows, a torn one
    with (tmp_path / "v.index.jsonl").open("a") as f:
        f.write('{"row": 2, "pa')  # a torn index line
    writer = NpyWriter(npy, model="m", rows_per_flush=1)
    assert writer.done_paths() == {"a", "b"}
    np.testing.assert_array_equal(np.load(npy), vectors(2))
    with pytest.raises(OutputMismatch, match="4-dimensional"):
        writer.add(["c"], vectors(1, dims=3))


def test_npy_refuses_a_foreign_file(tmp_path):
    np.save(tmp_path / "theirs.npy", np.zeros((2, 2), dtype=np.float64))
    with pytest.raises(OutputMismatch, match="not an array written by iei embed"):
        NpyWriter(tmp_path / "theirs.npy", model="m", rows_per_flush=1)
