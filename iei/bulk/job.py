"""One `iei embed` run: list the inputs, skip what OUT already holds, run an engine, store vectors,
report bad files, show progress.

The engines (`local_engine`, `ray_engine`) only embed; everything they produce goes through one
`JobSink`, so output, resume and error reporting behave the same whichever engine ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, NamedTuple

import numpy as np

from iei.bulk.inputs import list_images
from iei.bulk.output import EmbeddingWriter, open_writer
from iei.bulk.ray_options import RayOptions
from iei.config import Settings
from iei.extras import require

log = logging.getLogger("iei.embed")


@dataclass(frozen=True)
class EmbedOptions:
    """What to embed and where to put it (the model and runtime come from `Settings`)."""

    input: str
    output: str
    column: str | None = None  # for a Parquet/CSV input: the column of paths (default "path")
    format: str = "auto"  # auto | parquet | npy
    engine: str = "local"  # local | ray
    normalize: bool = True
    dimensions: int | None = None
    rows_per_flush: int = 4096  # rows per Parquet part / per NPY append
    errors: str | None = None  # JSONL file of the files that failed
    progress: bool = True
    ray: RayOptions = field(default_factory=RayOptions)


class Summary(NamedTuple):
    listed: int
    skipped: int  # already in OUT
    embedded: int
    failed: int
    seconds: float  # the whole run, model loading included
    embedding_s: float  # from the model being ready to the last vector

    @property
    def images_per_s(self) -> float:
        """Throughput once the model was loaded (embedded and failed images both count as work done)."""
        done = self.embedded + self.failed
        return done / self.embedding_s if self.embedding_s > 0 else 0.0


class JobSink:
    """Stores vectors, reports bad files, advances the progress bar. Owner: the thread driving the engine."""

    def __init__(self, writer: EmbeddingWriter, total: int, errors: IO[str] | None, progress: bool) -> None:
        tqdm = require("tqdm", "`iei embed`'s progress bar").tqdm

        self.writer = writer
        self.errors = errors
        self.embedded_count = 0
        self.failed_count = 0
        self.ready_at: float | None = None
        self.finished_at: float | None = None
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                        smoothing=0.05, desc="loading the model")

    def ready(self) -> None:
        """The engine has loaded the model: restart the clock, so images/s and the ETA measure embedding only."""
        self.ready_at = time.monotonic()
        self.bar.set_description("embedding", refresh=False)
        self.bar.reset()

    def embedded(self, paths: list[str], vectors: np.ndarray) -> None:
        self.writer.add(paths, vectors)
        self.embedded_count += len(paths)
        self.bar.update(len(paths))

    def failed(self, path: str, message: str) -> None:
        self.failed_count += 1
        self.bar.write(f"skipped {path}: {message}", file=sys.stderr)
        if self.errors is not None:
            self.errors.write(json.dumps({"path": path, "error": message}) + "\n")
        self.bar.update(1)

    @property
    def embedding_s(self) -> float:
        if self.ready_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.ready_at

    def close(self) -> None:
        self.finished_at = time.monotonic()
        self.bar.close()


def run_embed(settings: Settings, options: EmbedOptions) -> Summary:
    """Blocking. Raises InputListError, OutputMismatch, ModelNotFound, BackendError or ValueError
    for a run that cannot start; a bad image never raises (it is reported and skipped)."""
    started = time.monotonic()
    paths = list_images(options.input, options.column)
    writer = open_writer(options.output, options.format, model=settings.model_name, rows_per_flush=options.rows_per_flush)
    done = writer.done_paths()
    todo = [p for p in paths if p not in done]
    skipped = len(paths) - len(todo)
    log.info("%d images listed, %d already in %s, %d to embed", len(paths), skipped, options.output, len(todo))
    with contextlib.ExitStack() as closing:
        errors = closing.enter_context(open(options.errors, "a", encoding="utf-8")) if options.errors else None
        closing.callback(writer.close)  # runs after the sink's: flushes what was buffered, even on Ctrl-C
        sink = JobSink(writer, len(todo), errors, options.progress)
        closing.callback(sink.close)
        if todo:
            _run_engine(todo, settings, options, sink)
    return Summary(len(paths), skipped, sink.embedded_count, sink.failed_count, time.monotonic() - started,
                   sink.embedding_s)


def _run_engine(todo: list[str], settings: Settings, options: EmbedOptions, sink: JobSink) -> None:
    if options.engine == "ray":
        from iei.bulk.ray_engine import embed_with_ray

        embed_with_ray(todo, settings, sink, options.ray, normalize=options.normalize, dimensions=options.dimensions)
    elif options.engine == "local":
        from iei.bulk.local_engine import embed_locally

        embed_locally(todo, settings, sink, normalize=options.normalize, dimensions=options.dimensions)
    else:
        raise ValueError(f"unknown engine {options.engine!r}; choose local or ray")
