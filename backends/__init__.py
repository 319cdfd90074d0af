"""Model runtimes behind one small interface (`backends.base`).

Runtimes are imported lazily by name, so the server starts without torch or
onnxruntime installed and says which extra to install instead.
"""

from __future__ import annotations

import importlib

from backends.base import Backend, BackendConfig, BackendError, ModelInfo

__all__ = ["Backend", "BackendConfig", "BackendError", "ModelInfo", "load_backend", "BACKENDS"]

# name -> (module, factory function, pip extra that provides it)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("backends.torch_backend", "load_torch_backend", "iei[torch]"),
    "onnx": ("backends.onnx_backend", "load_onnx_backend", "iei[onnx]"),
    "tensorrt": ("backends.onnx_backend", "load_tensorrt_backend", "iei[onnx]"),
}


class BackendUnavailable(BackendError):
    """The requested runtime is unknown or its packages are not installed."""


def load_backend(name: str, config: BackendConfig) -> Backend:
    """Import the runtime called `name` and load the model described by `config` (blocking)."""
    try:
        module_name, factory_name, extra = BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(f"backend {name!r} needs packages that are not installed ({e.name}): pip install '{extra}'") from e
    return getattr(module, factory_name)(config)
