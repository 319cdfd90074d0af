"""Export a model's embedding to ONNX with Optimum, optimise/convert/quantise it, and cache the result.

The exported graph is the torch backend's `backends.pooling.EmbeddingModel` (model + pooling) traced by
Optimum's exporter with the family's feature-extraction ONNX config, whose outputs are replaced by the
one pooled `embedding` (B, D). So there is one definition of "the embedding": the ONNX file computes
exactly what the torch backend runs, and no backend re-implements pooling.

A dual encoder (CLIP, SigLIP) whose pooling shares the text space gets a second graph, `text_model.onnx`:
its `TextEmbeddingModel` (input_ids, attention_mask -> `embedding`), through the same pipeline. Both graphs
are traced from our own modules with our own example inputs (Optimum's dummy generators would use the
config's image size: DINOv2 says 518 where its processor crops 224).

Pipeline (all on the CPU, float32 trace): export -> graph optimisation (none | O1 | O2 | O3, ONNX
Runtime's transformer optimiser) -> float16 copy (CUDA) or dynamic int8 quantisation (CPU, Optimum's
config for the detected instruction set). The folder's layout, manifest and cache key are
`backends.onnx_manifest`'s. A graph whose weights pass 2 GB (protobuf's limit for one file) keeps them in one
external-data file beside it (`EXTERNAL_DATA_MIN_BYTES`, `_save_graph`) and skips the offline optimiser (`_optimize`).

Cache (`cached_export`): an entry is built in a temporary
folder and renamed into place, so a crash never leaves a half-written entry under its final name; an
entry whose manifest or checksums do not match (truncated copy, disk error, hand edit) is rebuilt.
Runs on the model process's main thread (or the `iei export` command); blocking, seconds to minutes.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from backends.base import BackendConfig, BackendError
from backends.onnx_manifest import (
    EXPORT_FORMAT, INPUT_NAME, MANIFEST, MODEL_FILE, OUTPUT_NAME, POSITION_TABLE_FILE, TEXT_MODEL_FILE, CorruptExport,
    ExportOptions, Manifest, cache_entry, cache_key, discard, effective_options, onnx_files, package_versions,
    read_export, sha256_of,
)
from backends.onnx_providers import cpu_isa

logger = logging.getLogger("iei.backends.onnx")

OPTIMIZE_LEVELS = ("none", "O1", "O2", "O3")
PRECISIONS = ("fp32", "fp16", "int8")
# transformers model_type -> ONNX Runtime optimiser model type (BERT-style fusions suit every ViT-like
# encoder; the CNNs only get LayerNorm/Gelu fusions, which is what matches there).
_ORT_MODEL_TYPE = {"swin": "swin", "swinv2": "swin"}


# Model types Optimum's exporter has no ONNX config for, exported with torch.onnx.export directly (the same
# wrapper modules, our own input names and dynamic axes). SigLIP 2: its NaFlex image graph takes position
# embeddings as an input (`backends.pooling.NaflexImageGraph`), which no Optimum config describes anyway.
# DINOv3 (ViT and ConvNeXt): Optimum has no config for either; their image graph is a plain (B, 3, H, W) input.
# AIMv2: optimum-onnx 0.1.0 has no config for either type. MetaCLIP 2: its config's model patcher calls the
# traced module with the whole dual encoder's inputs (input_ids and pixel_values), which our one-tower wrappers
# do not take.
_DIRECT_EXPORT_TYPES = ("siglip2", "dinov3_vit", "dinov3_convnext", "metaclip_2", "aimv2", "aimv2_vision_model")
_DIRECT_EXPORT_OPSET = 17  # LayerNormalization as one op
# A graph whose weights pass this many bytes is written as the graph (`model.onnx`) plus all its weights in one
# external-data file beside it (`model.onnx_data`), which ONNX Runtime reads from the same folder: protobuf cannot
# serialise one message past 2 GB (MetaCLIP 2's text tower: its 901,629-token table alone is 2.8 GB of float32).
# Below protobuf's 2**31 with room for the graph itself. Tests lower it to force the external-data path.
EXTERNAL_DATA_MIN_BYTES = 2**31 - 2**27


class ExportError(BackendError):
    """The model cannot be exported (unsupported type, exporter failure)."""


# -- building ------------------------------------------------------------------------------------


def _onnx_config(hf_config: Any, model_id: str, example: dict[str, Any] | None = None) -> Any:
    """Optimum's feature-extraction ONNX config for the model type, with `example`'s inputs (torch tensors;
    default: one pixel batch at the config's size) and the pooled `embedding` as the only output. Batch
    (and a text's length) are the dynamic axes."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    model_type = hf_config.model_type
    try:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="onnx", model_type=model_type, task="feature-extraction", library_name="transformers")
    except (KeyError, ValueError) as e:
        raise ExportError(
            f"model {model_id!r} (model type {model_type!r}) cannot be exported to ONNX: Optimum's exporter "
            f"(optimum-onnx {package_versions()['optimum-onnx']}) does not support model type {model_type!r}; "
            "serve it with --backend torch") from e
    base = type(constructor(hf_config, task="feature-extraction"))
    axes = {name: ({0: "batch_size"} if name == INPUT_NAME else {0: "batch_size", 1: "sequence_length"})
            for name in (example or {INPUT_NAME: None})}

    class EmbeddingOnnxConfig(base):  # type: ignore[misc, valid-type]
        @property
        def inputs(self) -> dict[str, dict[int, str]]:
            return axes

        @property
        def outputs(self) -> dict[str, dict[int, str]]:
            return {OUTPUT_NAME: {0: "batch_size"}}

        def generate_dummy_inputs(self, framework: str = "pt", **kwargs: Any) -> dict[str, Any]:
            return dict(example) if example is not None else super().generate_dummy_inputs(framework, **kwargs)

    return EmbeddingOnnxConfig(hf_config, task="feature-extraction")


def _naflex_examples(model: Any, max_num_patches: int, patch_values: int) -> list[dict[str, Any]]:
    """Batches for the NaFlex image graph: a full square grid beside a small one (padding masked), and a single
    image of another grid, so that neither the batch, the grids nor the padding is baked into the trace."""
    import torch

    from backends.naflex import PositionEmbeddings, patch_mask
    from backends.pooling import position_table

    table = PositionEmbeddings(position_table(model).float().numpy())
    side = max(1, int(max_num_patches ** 0.5))
    rng = np.random.default_rng(0)
    examples = []
    for grids in ([(1, 3)], [(side, max_num_patches // side), (3, 5)]):
        grid_array = np.array(grids, dtype=np.int64)
        mask = patch_mask(grid_array, max_num_patches)
        pixels = rng.standard_normal((len(grids), max_num_patches, patch_values), dtype=np.float32) * mask[..., None]
        examples.append({INPUT_NAME: torch.from_numpy(pixels.astype(np.float32)),
                         "pixel_attention_mask": torch.from_numpy(mask.astype(np.int64)),
                         "position_embeddings": torch.from_numpy(table.batch(grid_array, max_num_patches))})
    return examples


def _example_pixels(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    import torch

    return {INPUT_NAME: torch.from_numpy(np.random.default_rng(0).standard_normal((2, *image_shape), dtype=np.float32))}


def _example_text(hf_config: Any, length: int) -> dict[str, Any]:
    """Two texts of `length` tokens, ids below 500 (within every vocabulary) and the second padded: ends with
    the highest id, as CLIP's end-of-text token is (legacy CLIP configs locate it by argmax)."""
    import torch

    vocab = int(hf_config.text_config.vocab_size)
    ids = np.random.default_rng(0).integers(1, min(vocab, 500), (2, length))
    ids[:, -1] = vocab - 1
    mask = np.ones((2, length), dtype=np.int64)
    mask[1, length // 2 :] = 0
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def _external_data_file(path: Path) -> Path:
    return path.with_name(path.name + "_data")


def _weight_bytes(model: Any) -> int:
    """Bytes of the graph's initializers, from their shapes and types (works whether or not their data is loaded)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    return sum(int(np.prod(t.dims, dtype=np.int64)) * tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


def _save_graph(model: Any, path: Path) -> None:
    """Write the ModelProto `model` (weights loaded) to `path`: one file when its weights are under
    `EXTERNAL_DATA_MIN_BYTES`, else the graph in `path` and every weight in one external-data file beside it
    (`<name>_data`, a relative location, so the folder can be moved or renamed)."""
    import onnx

    data = _external_data_file(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if _weight_bytes(model) > EXTERNAL_DATA_MIN_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        data.chmod(path.stat().st_mode & 0o777)  # onnx creates it private (0600); a cache entry may be shared
    else:
        onnx.save_model(model, str(path))


def _has_external_data(path: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def _optimize(path: Path, level: str, model_type: str) -> bool:
    """ONNX Runtime's offline graph optimisation, in place; False where it was skipped. A graph stored with external
    data (weights past 2 GB) is left as exported: ORT's optimiser loads the whole graph into Python protobufs and
    copies it, and on MetaCLIP 2's 2.8 GB text graph it went past 22 GB of memory (AIMv2-L's text graph at
    O2: past 12 GB); the session still applies ORT's own fusions when it loads the graph. O1: basic (constant folding, redundant nodes);
    O2: plus transformer fusions (LayerNorm, SkipLayerNorm, BiasGelu, Attention); O3: plus approximate
    GELU (FastGelu; drifts ~3e-4 from torch, hence not the default). Optimum's O-levels, applied through
    ORT's optimiser directly because Optimum's ORTOptimizer only accepts a few model types."""
    if level == "none":
        return True
    if _has_external_data(path):
        logger.warning("not optimising %s (%s asked for): its weights pass 2 GB and are stored as external data, and "
                       "ONNX Runtime's offline optimiser needs many times a graph's size in memory (past 22 GB on a "
                       "2.8 GB graph); ONNX Runtime still optimises it when a session loads it", path.name, level)
        return False
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    ort_type = _ORT_MODEL_TYPE.get(model_type, "vit")
    options = FusionOptions(ort_type)
    options.enable_gelu_approximation = level == "O3"
    optimized = optimize_model(str(path), model_type=ort_type, optimization_options=options, opt_level=1,
                               only_onnxruntime=level == "O1")
    optimized.save_model_to_file(str(path))
    return True


def _to_fp16(path: Path) -> None:
    """A float16 graph with float32 inputs and outputs (the backend feeds and reads float32)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))  # external data, if any, loaded
    model.convert_float_to_float16(keep_io_types=True)
    _save_graph(model.model, path)  # half the size: back in one file where it now fits


def _quantize_int8(folder: Path, file_name: str = MODEL_FILE) -> str:
    """Dynamic int8 quantisation with Optimum's config for this CPU's instruction set (signed weights where
    VNNI makes them exact and fast). Returns the ISA used."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    isa = cpu_isa()
    qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=True)
    quantized_dir = folder / "int8"
    external = _has_external_data(folder / file_name)
    if external:
        logger.warning("quantising %s, whose weights pass 2 GB: ONNX Runtime's quantiser needs many times the graph's "
                       "size in memory (MetaCLIP 2 L/14's 3.1 GB text graph: 23.8 GB peak)", file_name)
    ORTQuantizer.from_pretrained(folder, file_name=file_name).quantize(
        qconfig, quantized_dir, use_external_data_format=external)
    produced = next(quantized_dir.glob("*.onnx"))
    if external:  # a quarter of the size: re-saved in one file where it now fits, the float32 data file removed
        import onnx

        _save_graph(onnx.load(str(produced)), folder / file_name)
    else:
        os.replace(produced, folder / file_name)
    shutil.rmtree(quantized_dir)
    logger.info("quantised to int8 (%s, weights %s)", isa, qconfig.weights_dtype.name)
    return isa


def _save_processor(config: BackendConfig, out: Path, text: bool) -> None:
    """The image processor and, for a text tower, the tokenizer (where the source has one: random weights
    without one get a random tokenizer when served)."""
    if config.load_format == "dummy":
        for file in Path(config.config_dir).iterdir():
            if file.name != "config.json" and file.suffix in (".json", ".txt", ".model"):
                shutil.copyfile(file, out / file.name)
        return
    from transformers import AutoImageProcessor, AutoTokenizer

    from backends.torch_backend import fast_only_processor_config

    fast_only = fast_only_processor_config(config.model, config.revision)
    if fast_only is not None:  # no class to save it with (torchvision): the config as published
        (out / "preprocessor_config.json").write_text(json.dumps(fast_only, indent=2, sort_keys=True) + "\n")
    else:
        AutoImageProcessor.from_pretrained(config.model, revision=config.revision, use_fast=False).save_pretrained(out)
    if text:
        AutoTokenizer.from_pretrained(config.model, revision=config.revision).save_pretrained(out)


def _torch_outputs(module: Any, examples: list[dict[str, Any]]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [module(*example.values()).float().numpy() for example in examples]


def _check(path: Path, examples: list[dict[str, Any]], wants: list[np.ndarray]) -> tuple[int, float]:
    """Run the final graph on fixed example batches against torch's outputs on them (`_torch_outputs`):
    (embedding_dim, max abs difference). Several examples of different shapes catch a size the trace baked in."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}  # an input the graph never reads is dropped by the trace
    diff, dim = 0.0, 0
    for example, want in zip(examples, wants):
        got = session.run([OUTPUT_NAME], {k: v.numpy() for k, v in example.items() if k in declared})[0]
        if got.shape != want.shape:
            raise ExportError(f"the exported graph returns shape {got.shape}, torch {want.shape}")
        diff, dim = max(diff, float(np.abs(got.astype(np.float32) - want).max())), int(got.shape[-1])
    return dim, diff


def _export_direct(module: Any, example: dict[str, Any], path: Path, opset: int) -> None:
    """torch.onnx.export of `module` called with `example`'s inputs in order; one output, the pooled
    `embedding`. Every input's first axis is the batch; the second axis of token ids, masks and patch arrays
    (2-D and 3-D inputs: texts' tokens, NaFlex's patches) is dynamic too, while an image tensor (B, C, H, W)
    keeps its size."""
    import torch

    axes = {name: {0: "batch_size", **({1: "sequence_length"} if value.dim() in (2, 3) else {})}
            for name, value in example.items()}
    axes[OUTPUT_NAME] = {0: "batch_size"}
    # Traced into a scratch folder: past 2 GB, torch writes each weight as its own file beside the graph; the
    # graph is then saved as one file or, past `EXTERNAL_DATA_MIN_BYTES`, with one external-data file.
    with tempfile.TemporaryDirectory(prefix=".trace-", dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, tuple(example.values()), str(traced), input_names=list(example), dynamo=False,
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset)
        import onnx

        _save_graph(onnx.load(str(traced)), path)


def _export_graph(module: Any, hf_config: Any, model_id: str, example: dict[str, Any], path: Path, opset: int) -> None:
    if hf_config.model_type in _DIRECT_EXPORT_TYPES:
        _export_direct(module, example, path, opset)
    else:
        from optimum.exporters.onnx import export

        module.config = hf_config  # Optimum's exporter reads and sets `model.config`
        export(module, _onnx_config(hf_config, model_id, example), path, opset=opset, disable_dynamic_axes_fix=True)


def export_model(config: BackendConfig, options: ExportOptions, out: str | os.PathLike) -> Manifest:
    """Export `config`'s model into the empty (or new) folder `out`. Raises ExportError/BackendError."""
    from backends.pooling import position_table
    from backends.torch_backend import image_size_of, load_cpu_embedder, patch_fields, read_model_config, text_fields

    if options.optimize not in OPTIMIZE_LEVELS:
        raise ExportError(f"unknown optimisation level {options.optimize!r}; use one of {', '.join(OPTIMIZE_LEVELS)}")
    if options.precision not in PRECISIONS:
        raise ExportError(f"unknown precision {options.precision!r}; use one of {', '.join(PRECISIONS)}")
    options = effective_options(options)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    hf_config, pooling, commit = read_model_config(config)
    direct = hf_config.model_type in _DIRECT_EXPORT_TYPES
    if not direct:
        _onnx_config(hf_config, config.model)  # before loading weights: unsupported types fail fast
    embedder, text_embedder, hf_config, pooling = load_cpu_embedder(config)
    image_size, num_channels = image_size_of(hf_config, config.image_size)
    patches = patch_fields(hf_config, config.max_num_patches, config.model)
    text = text_fields(hf_config, text_embedder is not None)
    if patches:  # NaFlex: the graph takes the position embeddings the backend resizes per grid
        patch_values = num_channels * patches["patch_size"] ** 2
        graphs = [(embedder, MODEL_FILE, _naflex_examples(embedder.model, patches["max_num_patches"], patch_values))]
    else:
        graphs = [(embedder, MODEL_FILE, [_example_pixels((num_channels, *image_size))])]
    if text_embedder is not None:
        max_length = text["text_max_length"]
        graphs.append((text_embedder, TEXT_MODEL_FILE, [_example_text(hf_config, n) for n in sorted({7, max_length})]))
    opset = options.opset or (_DIRECT_EXPORT_OPSET if direct else _onnx_config(hf_config, config.model).DEFAULT_ONNX_OPSET)
    isa, dims, diff, unoptimized = None, set(), 0.0, []
    try:
        # Every graph is traced before any is optimised, and the torch model is released (its outputs on the check
        # examples kept) before the optimiser and quantiser run: the optimiser's memory is not all given back to the
        # system, and on MetaCLIP 2 L/14 (4.3 GB of weights), tracing the text graph after O2 on the image graph
        # passed 16 GB, and O2 beside the torch model peaked at 14.2 GB.
        for module, file_name, examples in graphs:
            _export_graph(module, hf_config, config.model, examples[-1], out / file_name, opset)
        if patches:
            np.save(out / POSITION_TABLE_FILE, position_table(embedder.model).float().numpy())
        checks = [(file_name, examples, _torch_outputs(module, examples)) for module, file_name, examples in graphs]
        del embedder, text_embedder, graphs, module
        gc.collect()
        for file_name, _, _ in checks:
            if not _optimize(out / file_name, options.optimize, hf_config.model_type):
                unoptimized.append(file_name)
            if options.precision == "fp16":
                _to_fp16(out / file_name)
        hf_config.save_pretrained(out)
        _save_processor(config, out, TEXT_MODEL_FILE in (name for name, _, _ in checks))
        for file_name, examples, wants in checks:
            if options.precision == "int8":
                isa = _quantize_int8(out, file_name)
            dim, graph_diff = _check(out / file_name, examples, wants)
            dims.add(dim)
            diff = max(diff, graph_diff)
    except BackendError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"exporting model {config.model!r} (model type {hf_config.model_type!r}) to ONNX failed: "
                          f"{type(e).__name__}: {first}") from e
    if len(dims) != 1:
        raise ExportError(f"the image and text graphs of {config.model!r} return different widths {sorted(dims)}")
    manifest = Manifest(
        format=EXPORT_FORMAT, model_id=config.model, revision=config.revision, commit=commit,
        random_weights=config.load_format == "dummy", model_type=hf_config.model_type, pooling=pooling,
        embedding_dim=dims.pop(), image_size=image_size, num_channels=num_channels, opset=opset,
        optimize=options.optimize, precision=options.precision, int8_isa=isa, input_name=INPUT_NAME,
        output_name=OUTPUT_NAME, files={p.name: sha256_of(p) for p in onnx_files(out)},
        versions=package_versions(), check_max_abs_diff=diff, unoptimized=tuple(unoptimized), **text, **patches,
    )
    (out / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    logger.info("exported %s to %s (%s, %s, opset %d, %s, max |onnx - torch| %.2e)", config.model, out,
                options.optimize, options.precision, opset, "+".join(manifest.modalities), diff)
    return manifest


def cached_export(config: BackendConfig, options: ExportOptions, cache_dir: str | os.PathLike) -> tuple[Path, Manifest]:
    """The cache entry for this model and these options, exported first if missing or corrupt.
    Returns (folder, manifest). Raises ExportError/BackendError."""
    from backends.torch_backend import read_model_config

    _, pooling, commit = read_model_config(config)
    options = effective_options(options)
    entry = cache_entry(cache_dir, config.model, cache_key(config, pooling, commit, options))
    if entry.exists():
        try:
            manifest = read_export(entry)
            logger.info("using the cached ONNX export %s", entry)
            return entry, manifest
        except CorruptExport as e:
            logger.warning("rebuilding the ONNX cache entry: %s", e)
            discard(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=entry.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the entry may be shared
    try:
        manifest = export_model(config, options, staging)
        try:
            os.rename(staging, entry)  # atomic: the entry appears complete or not at all
        except OSError:
            if not entry.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished the same export first
            manifest = read_export(entry)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return entry, manifest
