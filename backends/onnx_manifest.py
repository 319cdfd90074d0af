"""An exported ONNX folder: its manifest, the checks that it is complete, and where the cache keeps it.

A folder holds `model.onnx` (and `text_model.onnx` for a dual encoder; a graph whose weights pass 2 GB keeps them
in one external-data file beside it, `model.onnx_data` / `text_model.onnx_data`), `config.json`,
`preprocessor_config.json` and `iei-export.json` (the manifest: what was exported, how, by which package
versions, and the sha256 of every ONNX file). The manifest is written last, so its presence means the
folder is complete; a file that does not match its checksum makes the folder corrupt.

Cache: `<cache_dir>/<model>/<key>/`, where key hashes the model id, revision/commit (or the local
folder's file stats), pooling, opset, optimisation level, precision, int8 instruction set and the
versions of torch, transformers, optimum-onnx, onnx and onnxruntime. Building an entry is
`backends.onnx_export`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from backends.base import BackendConfig, BackendError
from backends.onnx_providers import cpu_isa

MANIFEST = "iei-export.json"
MODEL_FILE = "model.onnx"
TEXT_MODEL_FILE = "text_model.onnx"
# SigLIP 2 NaFlex: the (S, S, D) position-embedding table the backend resizes per patch grid (`backends.naflex`)
POSITION_TABLE_FILE = "position_embedding.npy"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "embedding"
EXPORT_FORMAT = 1  # bump when the folder layout or the exported graph changes meaning
_PACKAGES = ("torch", "transformers", "optimum-onnx", "optimum", "onnx", "onnxruntime")

class CorruptExport(BackendError):
    """An exported folder is incomplete or does not match its manifest."""


class ExportOptions(msgspec.Struct, frozen=True, kw_only=True):
    opset: int = 0  # 0: the exporter's default for the model type
    optimize: str = "O2"  # none | O1 | O2 | O3
    precision: str = "fp32"  # fp32 | fp16 | int8


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """iei-export.json: what the folder holds. Written last, so its presence means the folder is complete."""

    format: int
    model_id: str
    revision: str | None
    commit: str | None
    random_weights: bool
    model_type: str
    pooling: str
    embedding_dim: int
    image_size: tuple[int, int]
    num_channels: int
    opset: int
    optimize: str
    precision: str
    int8_isa: str | None
    input_name: str
    output_name: str
    files: dict[str, str]  # file name -> sha256
    versions: dict[str, str]
    # max |onnx - torch| on a fixed random batch, measured at export (fp32 ~1e-6; fp16/int8 larger)
    check_max_abs_diff: float
    # Text tower (CLIP, SigLIP): see ModelInfo's fields of the same names.
    modalities: tuple[str, ...] = ("image",)
    text_max_length: int | None = None
    text_padding: str | None = None
    # Variable-resolution models (SigLIP 2 NaFlex): see ModelInfo's fields of the same names. The image graph
    # then takes patches, pixel_attention_mask and position_embeddings (POSITION_TABLE_FILE resized per grid).
    max_num_patches: int | None = None
    patch_size: int | None = None
    # Graphs left as exported although `optimize` asked for more: their weights pass 2 GB (external data), where
    # ONNX Runtime's offline optimiser needs more memory than a small host has (`backends.onnx_export._optimize`).
    unoptimized: tuple[str, ...] = ()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_files(folder: Path) -> list[Path]:
    """What the manifest checksums: the graphs, their external-data files if the exporter split any off (models
    over 2 GB), and NaFlex's position table."""
    names = (MODEL_FILE, TEXT_MODEL_FILE)
    return sorted(p for p in folder.iterdir() if p.name in names or p.name == POSITION_TABLE_FILE
                  or p.name.startswith(tuple(n + "_data" for n in names)))


def _source_fingerprint(config: BackendConfig) -> str | None:
    """What identifies local weights: name, size and mtime of each file of the folder (cheap; a re-saved
    folder gets a new entry). Hub models are identified by their commit instead."""
    folder = Path(config.config_dir if config.load_format == "dummy" else config.model).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            stat = p.stat()
            digest.update(f"{p.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def effective_options(options: ExportOptions) -> ExportOptions:
    """int8 graphs are quantised from the unfused export: ORT's quantiser cannot type the fused contrib ops
    (BiasGelu, SkipLayerNormalization), and ORT fuses the quantised graph itself when the session loads."""
    if options.precision == "int8" and options.optimize != "none":
        return msgspec.structs.replace(options, optimize="none")
    return options


def cache_key(config: BackendConfig, pooling: str, commit: str | None, options: ExportOptions) -> dict[str, Any]:
    """Everything that changes the exported file."""
    return {
        "format": EXPORT_FORMAT, "model": config.model, "revision": config.revision, "commit": commit,
        "load_format": config.load_format, "source": _source_fingerprint(config), "pooling": pooling,
        "image_size": config.image_size, "max_num_patches": config.max_num_patches,
        "opset": options.opset, "optimize": options.optimize, "precision": options.precision,
        "int8_isa": cpu_isa() if options.precision == "int8" else None, "versions": package_versions(),
    }


def cache_entry(cache_dir: str | os.PathLike, model: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/~.")) or "model"
    return Path(cache_dir).expanduser() / safe[-100:] / digest


def is_export_folder(path: str | os.PathLike) -> bool:
    folder = Path(path).expanduser()
    return folder.is_dir() and ((folder / MODEL_FILE).is_file() or (folder / MANIFEST).is_file())


def read_export(folder: str | os.PathLike, *, verify: bool = True) -> Manifest:
    """The folder's manifest, after checking that every ONNX file is present with its recorded sha256.
    Raises CorruptExport."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / MODEL_FILE).is_file():
            raise CorruptExport(
                f"{folder} holds {MODEL_FILE} but no {MANIFEST}: IEI serves ONNX files it exported itself "
                "(`iei export`), because the pooling is part of the exported graph")
        raise CorruptExport(f"{folder} has no {MANIFEST} (incomplete export)")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CorruptExport(f"{path} is unreadable: {e}") from None
    if manifest.format != EXPORT_FORMAT:
        raise CorruptExport(f"{folder} was written by an incompatible IEI (export format {manifest.format}, expected {EXPORT_FORMAT})")
    if verify:
        for name, expected in manifest.files.items():
            file = folder / name
            if not file.is_file():
                raise CorruptExport(f"{folder} lacks {name}")
            if sha256_of(file) != expected:
                raise CorruptExport(f"{file} does not match its checksum (truncated or modified)")
    return manifest


def discard(entry: Path) -> None:
    """Remove a cache entry (renamed aside first, so a reader never sees it half-deleted)."""
    aside = entry.with_name(f".discard-{entry.name}-{os.getpid()}")
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
