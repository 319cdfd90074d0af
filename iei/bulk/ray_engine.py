"""The Ray Data engine of `iei embed`: the same preprocessing and backend, spread over a cluster.

    paths -> decode tasks (CPU: read, decode, resize, crop -> uint8 pixels)
          -> model actors (the backend, on a GPU when the cluster has one; same normalisation)
          -> the driver, which writes vectors with the same writer as the in-process engine

The decode stage runs `iei.preprocess.image.prepare_pixels`, the function the server's workers run,
with the spec read from the model's processor config on the driver; the actors load the backend
from the same `BackendConfig` the server builds (`iei.model_plan.model_plan`). Vectors therefore equal
served ones. Vectors (a few KB per image) stream back to the driver instead of being written by
Ray's Parquet sink, so resume, bad-file reports and the NPY format work as they do in-process, and
OUT need not be storage every node can reach (the inputs must be).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from iei.bulk.inputs import read_image_file
from iei.bulk.local_engine import ResultSink, check_dimensions
from iei.bulk.ray_options import RayOptions
from iei.config import Settings
from iei.engine import finish_vectors
from iei.model_plan import model_plan
from iei.errors import InputError
from iei.extras import require
from iei.preprocess.image import prepare_patches, prepare_pixels
from iei.preprocess.spec import PreprocessSpec

log = logging.getLogger("iei.embed.ray")

_BLOCK_IMAGES = 256  # at most this many paths per input block, and at least two blocks per decode task


def decode_batch(batch: dict[str, np.ndarray], spec_bytes: bytes) -> dict[str, np.ndarray]:
    """Decode stage (a Ray task): paths -> uint8 pixels (n, *spec.item_shape), the patch grids (n, 2) of a
    variable-resolution model (zeros otherwise) and an error per path ("" if ok)."""
    spec = msgspec.msgpack.decode(spec_bytes, type=PreprocessSpec)
    paths = batch["path"]
    pixels = np.zeros((len(paths), *spec.item_shape), dtype=np.uint8)
    grids = np.zeros((len(paths), 2), dtype=np.int32)
    errors = []
    for i, path in enumerate(paths):
        try:
            if spec.variable_grid:
                grids[i] = prepare_patches(read_image_file(str(path)), spec, out=pixels[i])
            else:
                prepare_pixels(read_image_file(str(path)), spec, out=pixels[i])
            errors.append("")
        except InputError as e:
            errors.append(e.message)
        except Exception:  # a decoder bug must not fail the whole job
            logging.getLogger("iei.embed.ray").exception("preprocessing %s failed unexpectedly", path)
            errors.append("the image could not be processed")
    return {"path": paths, "pixels": pixels, "grids": grids, "error": np.array(errors, dtype=object)}


class EmbedStage:
    """Model stage (a Ray actor): holds one loaded backend and embeds the decoded rows of each batch."""

    def __init__(self, backend_name: str, config_bytes: bytes, normalize: bool, dimensions: int | None) -> None:
        from backends import BackendConfig, load_backend

        self.backend = load_backend(backend_name, msgspec.msgpack.decode(config_bytes, type=BackendConfig))
        self.backend.warmup()
        check_dimensions(dimensions, self.backend.info.embedding_dim)
        self.normalize, self.dimensions = normalize, dimensions
        self.width = dimensions or self.backend.info.embedding_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from backends import BackendError

        errors = np.array(batch["error"], dtype=object)
        vectors = np.zeros((len(errors), self.width), dtype=np.float32)
        decoded = errors == ""
        if decoded.any():
            try:
                grids = batch["grids"][decoded] if self.backend.info.max_num_patches is not None else None
                raw = self.backend.embed_images(np.ascontiguousarray(batch["pixels"][decoded]), grids)
                vectors[decoded] = finish_vectors(raw, self.normalize, self.dimensions)
            except BackendError as e:  # this batch's files fail (and a rerun retries them); the job goes on
                errors[decoded] = str(e)
        return {"path": batch["path"], "vector": vectors, "error": errors}


def build_dataset(paths: Sequence[str], settings: Settings, options: RayOptions, *, normalize: bool,
                  dimensions: int | None, embed_gpus: float) -> Any:
    """The lazy Ray Dataset of {path, vector, error} rows (Ray must be initialised)."""
    import ray

    _, spec, config = model_plan(settings)
    blocks = min(len(paths), max(-(-len(paths) // _BLOCK_IMAGES), 2 * (options.decode_concurrency or 4)))
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    dataset = dataset.map_batches(
        decode_batch, fn_kwargs={"spec_bytes": msgspec.msgpack.encode(spec)}, batch_size=options.decode_batch_size,
        batch_format="numpy", num_cpus=options.decode_cpus, concurrency=options.decode_concurrency,
    )
    return dataset.map_batches(
        EmbedStage, fn_constructor_args=(settings.backend, msgspec.msgpack.encode(config), normalize, dimensions),
        batch_size=settings.max_batch_size, batch_format="numpy", num_cpus=options.embed_cpus, num_gpus=embed_gpus,
        concurrency=options.embed_concurrency,
    )


def embed_with_ray(paths: Sequence[str], settings: Settings, sink: ResultSink, options: RayOptions, *,
                   normalize: bool, dimensions: int | None) -> None:
    """Blocking: run the pipeline on the cluster (or a local instance) and feed `sink` as rows arrive."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, options)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is the one to watch
        gpus = options.embed_gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        dataset = build_dataset(paths, settings, options, normalize=normalize, dimensions=dimensions, embed_gpus=gpus)
        sink.ready()  # the actors load the model as the pipeline starts: their loading counts as embedding time
        for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
            _deliver(batch, sink)
    finally:
        if started_here:
            ray.shutdown()


def _init(ray: Any, options: RayOptions) -> None:
    if options.address:
        ray.init(address=options.address, log_to_driver=True)
        return
    # No address: $RAY_ADDRESS if set, else a local instance of num_cpus CPUs.
    import os

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=True)


def _deliver(batch: dict[str, np.ndarray], sink: ResultSink) -> None:
    errors = batch["error"]
    embedded = errors == ""
    if embedded.any():
        sink.embedded([str(p) for p in batch["path"][embedded]], np.asarray(batch["vector"][embedded], dtype=np.float32))
    for path, error in zip(batch["path"][~embedded], errors[~embedded]):
        sink.failed(str(path), str(error))
