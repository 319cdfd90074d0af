"""The `iei embed` subcommand: its flags (the model and runtime flags are `iei serve`'s, from
`iei.config`) and its exit codes: 0 when the run completed (bad files are reported, not fatal),
2 when it could not start."""

from __future__ import annotations

import argparse
import logging

from iei.bulk.job import EmbedOptions
from iei.bulk.ray_options import RayOptions
from iei.config import Settings, add_settings_arguments

log = logging.getLogger("iei.embed")

# Settings of the HTTP server that mean nothing offline.
SERVER_ONLY_SETTINGS = ("host", "port", "api_key", "payload_limit", "max_concurrent_requests", "max_client_batch_size",
                        "batch_jobs", "batch_db", "batch_input_root", "batch_job_workers", "batch_max_inputs")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="A folder (searched recursively for images), a text file with one path per "
                                      "line, or a Parquet/CSV table with a column of paths.")
    parser.add_argument("--output", "-o", required=True,
                        help="Where vectors go: a folder of Parquet parts (columns path, vector, model, dims), or "
                             "FILE.npy (float32 rows) plus FILE.index.jsonl (row -> path). An existing OUT is "
                             "resumed: paths it holds are skipped.")
    parser.add_argument("--column", default=None, help="Column of paths in a Parquet/CSV INPUT (default: path).")
    parser.add_argument("--format", default="auto", choices=("auto", "parquet", "npy"),
                        help="Output format (auto: npy if OUT ends in .npy, else parquet).")
    parser.add_argument("--engine", default="local", choices=("local", "ray"),
                        help="local: this machine, the server's preprocessing pool and model process. "
                             "ray: Ray Data, on a cluster or a local instance (pip install 'iei[ray]').")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise vectors, as /embed does by default.")
    parser.add_argument("--dimensions", type=_positive, default=None, help="Keep the first N dimensions (before normalising).")
    parser.add_argument("--rows-per-flush", type=_positive, default=4096,
                        help="Vectors buffered before a write (one Parquet part); an interrupted run loses at most this many.")
    parser.add_argument("--errors", default=None, help="Append the files that failed to this JSONL file ({path, error}).")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="Show a progress bar (images/s, ETA) on stderr.")
    ray = parser.add_argument_group("Ray engine (--engine ray)")
    ray.add_argument("--ray-address", default=None,
                     help="Cluster to join (auto, or ray://HEAD:10001). Default: $RAY_ADDRESS, else start a local instance.")
    ray.add_argument("--ray-num-cpus", type=_positive, default=None, help="CPUs of a local instance (default: all).")
    ray.add_argument("--ray-decode-concurrency", type=_positive, default=None,
                     help="Decode tasks running at once (map_batches concurrency; default: as many as CPUs allow).")
    ray.add_argument("--ray-decode-batch-size", type=_positive, default=32, help="Images per decode task call.")
    ray.add_argument("--ray-decode-cpus", type=float, default=1.0, help="CPUs reserved by each decode task.")
    ray.add_argument("--ray-embed-concurrency", type=_positive, default=1,
                     help="Model actors (map_batches concurrency), each holding a copy of the model.")
    ray.add_argument("--ray-embed-gpus", type=float, default=None,
                     help="GPUs per model actor (default: 1 if the cluster has GPUs, else 0; fractions share a GPU).")
    ray.add_argument("--ray-embed-cpus", type=float, default=1.0, help="CPUs reserved by each model actor.")
    add_settings_arguments(parser.add_argument_group("model and runtime (as iei serve)"), exclude=SERVER_ONLY_SETTINGS)


def options_from(args: argparse.Namespace) -> EmbedOptions:
    return EmbedOptions(
        input=args.input, output=args.output, column=args.column, format=args.format, engine=args.engine,
        normalize=args.normalize, dimensions=args.dimensions, rows_per_flush=args.rows_per_flush,
        errors=args.errors, progress=args.progress,
        ray=RayOptions(
            address=args.ray_address, num_cpus=args.ray_num_cpus, decode_concurrency=args.ray_decode_concurrency,
            decode_batch_size=args.ray_decode_batch_size, decode_cpus=args.ray_decode_cpus,
            embed_concurrency=args.ray_embed_concurrency, embed_gpus=args.ray_embed_gpus, embed_cpus=args.ray_embed_cpus,
        ),
    )


def embed(args: argparse.Namespace, settings: Settings) -> int:
    from backends import BackendError
    from iei.bulk.inputs import InputListError
    from iei.bulk.job import run_embed
    from iei.bulk.output import OutputMismatch
    from iei.models import ModelNotFound

    try:
        summary = run_embed(settings, options_from(args))
    except (InputListError, OutputMismatch, ModelNotFound, BackendError, ValueError, OSError) as e:
        log.error("cannot embed: %s", e)
        return 2
    print(f"{summary.embedded} embedded, {summary.failed} failed, {summary.skipped} already in {args.output} "
          f"({summary.listed} listed) in {summary.seconds:.1f} s; {summary.images_per_s:.1f} images/s after loading the model")
    return 0
