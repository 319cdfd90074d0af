"""Where `iei embed` puts vectors, written so that an interrupted run loses at most one unflushed
chunk and a rerun skips every path already stored.

- Parquet: OUT is a folder (a Parquet dataset, readable with `pyarrow.dataset`, pandas, Polars,
  DuckDB, Spark, `ray.data.read_parquet`) of `part-*.parquet` files with columns
  `path` (string), `vector` (fixed-size list of float32), `model` (string), `dims` (int32).
  Each part is written to a temporary name and renamed, so a part is complete or absent.
- NPY: OUT.npy, a float32 (N, D) array (`np.load(OUT, mmap_mode="r")`), and OUT.index.jsonl whose
  line i is `{"row": i, "path": ..., "model": ...}`. Rows are appended in place; the header's row
  count and the index are updated after the rows, and on reopening both are cut back to the rows
  the index vouches for.

Owner: one thread (the run's), no locking.
"""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from iei.extras import require


class OutputMismatch(Exception):
    """OUT already holds vectors of another model or width; the message says which."""


class EmbeddingWriter(Protocol):
    def done_paths(self) -> set[str]:
        """Paths OUT already holds (what a resumed run skips)."""
        ...

    def add(self, paths: list[str], vectors: np.ndarray) -> None:
        """Store float32 (len(paths), dims) vectors; flushed in chunks. Raises OutputMismatch if OUT
        holds vectors of another width."""
        ...

    def close(self) -> None:
        """Flush what is buffered."""
        ...


def output_format(out: str, fmt: str) -> str:
    """fmt: parquet | npy | auto (npy when OUT ends in .npy)."""
    if fmt == "auto":
        return "npy" if out.lower().endswith(".npy") else "parquet"
    if fmt not in ("parquet", "npy"):
        raise ValueError(f"unknown output format {fmt!r}; choose parquet or npy")
    return fmt


def open_writer(out: str, fmt: str, *, model: str, rows_per_flush: int) -> EmbeddingWriter:
    """Open OUT for appending vectors of `model` (the width is fixed by the first `add`).
    Raises OutputMismatch if OUT holds another model's vectors or is not an IEI output."""
    writer = NpyWriter if output_format(out, fmt) == "npy" else ParquetDatasetWriter
    if writer is ParquetDatasetWriter:  # before any folder is made or model loaded
        require("pyarrow.parquet", "Parquet output (an --output folder; OUT.npy writes NumPy without it)")
    return writer(Path(out), model=model, rows_per_flush=rows_per_flush)


def _check_model(out: Path, held: str | None, model: str) -> None:
    if held is not None and held != model:
        raise OutputMismatch(f"{out} holds vectors of {held}, not {model}; choose another --output")


def _check_dims(out: Path, held: int | None, dims: int) -> None:
    if held is not None and held != dims:
        raise OutputMismatch(f"{out} holds {held}-dimensional vectors, not {dims}; choose another --output")


class _Buffer:
    def __init__(self, rows_per_flush: int) -> None:
        self.rows_per_flush = rows_per_flush
        self.paths: list[str] = []
        self.vectors: list[np.ndarray] = []

    def add(self, paths: list[str], vectors: np.ndarray) -> bool:
        """Buffer; True when a flush is due."""
        self.paths.extend(paths)
        self.vectors.append(np.asarray(vectors, dtype=np.float32))
        return len(self.paths) >= self.rows_per_flush

    def take(self) -> tuple[list[str], np.ndarray] | None:
        if not self.paths:
            return None
        paths, vectors = self.paths, np.concatenate(self.vectors)
        self.paths, self.vectors = [], []
        return paths, vectors


class _BufferedWriter:
    """Rows are buffered and written in chunks by `_flush`; every chunk must have the width of the
    vectors the output already holds (`out` names the output in that error)."""

    out: Path
    dims: int | None
    buffer: _Buffer

    def add(self, paths: list[str], vectors: np.ndarray) -> None:
        _check_dims(self.out, self.dims, vectors.shape[1])
        self.dims = vectors.shape[1]
        if self.buffer.add(paths, vectors):
            self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        raise NotImplementedError


class ParquetDatasetWriter(_BufferedWriter):
    def __init__(self, folder: Path, *, model: str, rows_per_flush: int) -> None:
        self.folder, self.model = folder, model
        self.out = folder
        self.dims: int | None = None  # of the vectors held; fixed by the first part
        self.buffer = _Buffer(rows_per_flush)
        # Part names carry the run's start time, so a resumed run never overwrites an earlier part.
        self._prefix = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._parts = 0
        if folder.exists() and not folder.is_dir():
            raise OutputMismatch(f"{folder} exists and is not a folder (Parquet output is a folder of parts)")
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.parquet.tmp"):  # a part whose run was killed mid-write
            stale.unlink()
        self._done = self._read_done()

    def _read_done(self) -> set[str]:
        import pyarrow.parquet as pq

        done: set[str] = set()
        for part in sorted(self.folder.glob("*.parquet")):
            try:
                table = pq.read_table(part, columns=["path", "model", "dims"])
            except (OSError, ValueError, KeyError) as e:
                raise OutputMismatch(f"{part} is not a part written by iei embed ({e}); choose another --output") from None
            if table.num_rows:
                _check_model(self.folder, table.column("model")[0].as_py(), self.model)
                self.dims = table.column("dims")[0].as_py()
            done.update(table.column("path").to_pylist())
        return done

    def done_paths(self) -> set[str]:
        return set(self._done)

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        taken = self.buffer.take()
        if taken is None:
            return
        paths, vectors = taken
        dims = vectors.shape[1]
        table = pa.table({
            "path": pa.array(paths, type=pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dims),
            "model": pa.array([self.model] * len(paths), type=pa.string()),
            "dims": pa.array([dims] * len(paths), type=pa.int32()),
        })
        name = f"{self._prefix}-{self._parts:05d}.parquet"
        temporary = self.folder / f".{name}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.folder / name)
        self._parts += 1
        self._done.update(paths)


_NPY_HEADER_BYTES = 128  # fixed, so the row count can be rewritten in place as the file grows


def _npy_header(rows: int, dims: int) -> bytes:
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dims)})
    body_len = _NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


def _npy_dims(npy: Path) -> int:
    with npy.open("rb") as f:
        head = f.read(_NPY_HEADER_BYTES)
    try:
        assert head.startswith(b"\x93NUMPY\x01\x00") and len(head) == _NPY_HEADER_BYTES
        header = ast.literal_eval(head[10:].decode("latin1").strip())
        assert header["descr"] == "<f4" and len(header["shape"]) == 2
        return int(header["shape"][1])
    except (AssertionError, ValueError, SyntaxError, KeyError, TypeError):
        raise OutputMismatch(f"{npy} is not an array written by iei embed; choose another --output") from None


class NpyWriter(_BufferedWriter):
    def __init__(self, npy: Path, *, model: str, rows_per_flush: int) -> None:
        self.npy, self.model = npy, model
        self.out = npy
        self.index = npy.with_name(npy.stem + ".index.jsonl")
        self.buffer = _Buffer(rows_per_flush)
        self.dims: int | None = None  # set by an existing array or the first add
        self.paths: list[str] = self._reopen() if npy.exists() else []

    def _reopen(self) -> list[str]:
        """Cut the array and the index back to the rows both hold, and return their paths."""
        self.dims = _npy_dims(self.npy)
        lines = self.index.read_bytes().split(b"\n") if self.index.exists() else []
        complete = [json.loads(line) for line in lines[:-1]]  # the last piece lacks its newline
        if complete:
            _check_model(self.npy, complete[0]["model"], self.model)
        rows_in_array = (self.npy.stat().st_size - _NPY_HEADER_BYTES) // (4 * self.dims)
        rows = min(len(complete), rows_in_array)
        with self.npy.open("r+b") as f:
            f.truncate(_NPY_HEADER_BYTES + rows * 4 * self.dims)
            f.write(_npy_header(rows, self.dims))
        kept = complete[:rows]
        self.index.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
        return [entry["path"] for entry in kept]

    def done_paths(self) -> set[str]:
        return set(self.paths)

    def _flush(self) -> None:
        taken = self.buffer.take()
        if taken is None:
            return
        paths, vectors = taken
        if not self.npy.exists():  # the first rows: start both files (an index without its array is stale)
            self.npy.parent.mkdir(parents=True, exist_ok=True)
            self.npy.write_bytes(_npy_header(0, vectors.shape[1]))
            self.index.write_text("")
        with self.npy.open("r+b") as f:  # rows first, then the header that counts them, then the index
            f.seek(0, os.SEEK_END)
            f.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            f.write(_npy_header(len(self.paths) + len(paths), vectors.shape[1]))
        first = len(self.paths)
        with self.index.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps({"row": first + i, "path": p, "model": self.model}) + "\n"
                         for i, p in enumerate(paths))
        self.paths.extend(paths)
