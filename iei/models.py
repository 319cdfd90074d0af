"""Which files a model name stands for: a local folder, a hub id, or (for random-weight "dummy"
loading without the hub) the bundled catalog of the original server's model configs.

No torch here. Runs once at start-up, before the backend loads; may touch the local disk and the
Hugging Face cache, never the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import msgspec

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
_REQUIRED_FILES = ("config.json", "preprocessor_config.json")


def transformers_without_torch() -> None:
    """Have this process's transformers leave torch out: it imports torch whenever torch is installed, which
    costs ~6 s and ~250 MB. For processes that read processors and tokenizers but run no torch model (the
    preprocessing workers; the model process serving a ready ONNX export). Call before importing transformers."""
    os.environ.update(USE_TORCH="0", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")  # and no notice that torch is off


class ModelNotFound(Exception):
    """The model name does not lead to a usable config. The message says where we looked."""


class ModelSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where the model's files come from.

    `model_id` is the name as the user gave it (reported in /info). For `load_format="dummy"`,
    `config_dir` is a local folder holding config.json and preprocessor_config.json (random weights
    are built from it); for "auto" it is None and the backend's `from_pretrained` does the loading.
    """

    model_id: str
    revision: str | None = None
    load_format: Literal["auto", "dummy"] = "auto"
    config_dir: str | None = None

    @property
    def processor_source(self) -> str:
        """What to pass to `AutoImageProcessor.from_pretrained` (with `revision`)."""
        return self.config_dir if self.config_dir is not None else self.model_id


def catalog_ids() -> list[str]:
    """Hub ids of the bundled configs, e.g. "google/vit-base-patch16-224"."""
    if not CATALOG_DIR.is_dir():
        return []
    return sorted(d.name.replace("--", "/", 1) for d in CATALOG_DIR.iterdir() if (d / "config.json").is_file())


def catalog_dir(model_id: str) -> Path | None:
    """The bundled folder for a hub id, or None."""
    if model_id.count("/") != 1:
        return None
    folder = CATALOG_DIR / model_id.replace("/", "--")
    return folder if (folder / "config.json").is_file() else None


def _missing_files(folder: Path) -> list[str]:
    return [name for name in _REQUIRED_FILES if not (folder / name).is_file()]


def _cached_file(model_id: str, name: str, revision: str | None) -> Path | None:
    """A file of the repo's snapshot in the local HF cache, or None (never downloads)."""
    if model_id.count("/") > 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, name, revision=revision)
    except ValueError:  # HFValidationError: a malformed repo id is simply not in the cache
        return None
    return Path(found) if isinstance(found, str) else None  # None (unknown) or _CACHED_NO_EXIST


def _cached_config_dir(model_id: str, revision: str | None) -> Path | None:
    """The HF-cache snapshot folder holding this repo's config files, or None (never downloads)."""
    config = _cached_file(model_id, "config.json", revision)
    processor = _cached_file(model_id, "preprocessor_config.json", revision)
    if config is None or processor is None or config.parent != processor.parent:
        return None
    return config.parent


def has_text_tower(model: str, revision: str | None = None) -> bool:
    """Whether the model's config.json declares a text tower (CLIP, SigLIP), read where it already is on disk:
    a local folder, the HF cache, the bundled catalog (never the network). A start-up hint only (the loaded
    model decides what it embeds); False when no config is found or it cannot be read."""
    local = Path(model).expanduser()
    if local.is_dir():
        config = local / "config.json"
    else:
        bundled = catalog_dir(model)
        config = _cached_file(model, "config.json", revision) or (bundled / "config.json" if bundled else None)
    try:
        return config is not None and "text_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or model in (".", "..")


def resolve_model(model: str, revision: str | None = None, load_format: str = "auto") -> ModelSource:
    """Turn a model name into a ModelSource. Raises ModelNotFound (and ValueError for an unknown
    load_format).

    dummy: a local folder, else the bundled catalog entry, else config files already in the local
    HF cache (honours HF_HOME / HF_HUB_CACHE; never downloads).
    auto: a local folder or a hub id, passed through; the backend loads it (cache, HF_HUB_OFFLINE).
    """
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown load_format {load_format!r}; choose 'auto' or 'dummy'")
    local = Path(model).expanduser()
    if local.is_dir():
        if load_format == "dummy":
            missing = _missing_files(local)
            if missing:
                raise ModelNotFound(f"model folder {model!r} lacks {', '.join(missing)}")
            return ModelSource(model_id=model, revision=revision, load_format="dummy", config_dir=str(local.resolve()))
        return ModelSource(model_id=model, revision=revision, load_format="auto", config_dir=None)
    if _looks_like_path(model):
        raise ModelNotFound(f"model folder {model!r} does not exist")
    if load_format == "auto":
        return ModelSource(model_id=model, revision=revision, load_format="auto", config_dir=None)

    bundled = catalog_dir(model)
    if bundled is not None:
        return ModelSource(model_id=model, revision=revision, load_format="dummy", config_dir=str(bundled))
    cached = _cached_config_dir(model, revision)
    if cached is not None:
        return ModelSource(model_id=model, revision=revision, load_format="dummy", config_dir=str(cached))
    raise ModelNotFound(
        f"no config for {model!r} to build random weights from: it is not a local folder, not in the "
        f"bundled catalog ({', '.join(catalog_ids())}), and config.json + preprocessor_config.json "
        "are not in the local Hugging Face cache"
    )
