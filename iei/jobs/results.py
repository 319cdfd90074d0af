"""A batch job's results as the client gets them: plain values per line (JSONL), or a Parquet file
with columns `index` (int64), `embedding` (list of float32, null on error), `error_type` and
`error` (strings, null on success)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from iei.errors import NotSupported
from iei.extras import MissingExtra, require
from iei.jobs.store import JobResult


class ResultLine(NamedTuple):
    index: int
    embedding: list[float] | None
    error_type: str | None
    error: str | None


def as_lines(chunk: list[JobResult]) -> list[ResultLine]:
    return [ResultLine(r.index, None if r.vector is None else np.frombuffer(r.vector, "<f4").tolist(),
                       r.error_type, r.error) for r in chunk]


def require_parquet() -> None:
    """Raises NotSupported when pyarrow is missing."""
    try:
        require("pyarrow.parquet", "Parquet results")
    except MissingExtra as e:
        raise NotSupported(f"{e} on the server; or ask for JSONL (the default)") from None


async def write_parquet(chunks: AsyncIterator[list[JobResult]], path: Path) -> None:
    """Write every chunk to the Parquet file `path`, one row group per chunk (written off the loop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("index", pa.int64()), ("embedding", pa.list_(pa.float32())),
                        ("error_type", pa.string()), ("error", pa.string())])
    writer = await asyncio.to_thread(pq.ParquetWriter, str(path), schema)
    try:
        async for chunk in chunks:  # converted and written off the loop: a chunk is up to 1024 vectors
            await asyncio.to_thread(lambda chunk=chunk: writer.write_table(_table(chunk, schema)))
    finally:
        await asyncio.to_thread(writer.close)


def _table(chunk: list[JobResult], schema):
    import pyarrow as pa

    vectors = [None if r.vector is None else np.frombuffer(r.vector, "<f4") for r in chunk]
    return pa.table({
        "index": [r.index for r in chunk],
        "embedding": pa.array(vectors, type=pa.list_(pa.float32())),
        "error_type": [r.error_type for r in chunk],
        "error": [r.error for r in chunk],
    }, schema=schema)
