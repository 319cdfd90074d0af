"""What a model needs before it can serve: where it comes from, its own preprocessing, and the
backend's configuration. Reading the processor imports transformers (and with it torch), so only
processes that run a model call this: the model process (`iei.model_host`) and the offline engines.
The HTTP process receives the result from its model process and never imports either."""

from __future__ import annotations

from typing import NamedTuple

from backends import BackendConfig
from iei.config import Settings
from iei.models import ModelSource, resolve_model
from iei.preprocess.image import pixel_affine
from iei.preprocess.spec import PreprocessSpec, load_spec


class ModelPlan(NamedTuple):
    source: ModelSource
    spec: PreprocessSpec  # the model's own preprocessing (input limits not applied)
    config: BackendConfig


def model_plan(settings: Settings) -> ModelPlan:
    """Resolve the model and read its preprocessing: what the workers and the backend are built from
    (also used by `iei embed`'s engines, so offline vectors equal served ones). Raises ModelNotFound
    or ValueError (unsupported processor)."""
    source = resolve_model(settings.model, settings.revision, settings.load_format)
    spec = load_spec(source.processor_source, source.revision, draft=settings.draft_decode,
                     max_image_pixels=settings.max_image_pixels)
    return ModelPlan(source, spec, backend_config(settings, source, spec))


def backend_config(settings: Settings, source: ModelSource, spec: PreprocessSpec) -> BackendConfig:
    """What the backend needs from the settings: the model, its runtime options, and the pixel affine
    that turns the workers' uint8 pixels into the processor's normalised floats."""
    scale, offset = pixel_affine(spec)
    return BackendConfig(
        model=settings.model, revision=settings.revision, load_format=settings.load_format,
        config_dir=source.config_dir, device=settings.device, dtype=settings.dtype, pooling=settings.pooling,
        num_threads=settings.backend_threads, max_batch_size=settings.max_batch_size,
        pixel_scale=scale, pixel_offset=offset, onnx_optimize=settings.onnx_optimize, quantize=settings.quantize,
        onnx_cache_dir=settings.onnx_cache_path, allow_cpu_fallback=settings.allow_cpu_fallback,
        image_size=(spec.output_height, spec.output_width), max_num_patches=spec.max_num_patches,
    )

