"""How `iei embed --engine ray` uses the cluster (plain data: no Ray import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a cluster ("auto", "ray://head:10001"); None: $RAY_ADDRESS, else a local instance
    num_cpus: int | None = None  # CPUs of a local instance (ignored when joining a cluster)
    decode_concurrency: int | None = None  # decode tasks at once (None: Ray's autoscaling)
    decode_batch_size: int = 32  # images per decode task call
    decode_cpus: float = 1.0  # CPUs each decode task reserves
    embed_concurrency: int = 1  # model actors (one model copy each)
    embed_gpus: float | None = None  # GPUs per model actor (None: 1 when the cluster has GPUs, else 0)
    embed_cpus: float = 1.0  # CPUs each model actor reserves
