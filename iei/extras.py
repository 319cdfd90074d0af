"""Optional packages and the extra that installs each: a missing one is a one-line error that says what
to `pip install`, never a ModuleNotFoundError traceback. Every optional import outside `backends/`
goes through `require` (backends name their extra in `backends.load_backend`)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# module -> the extra of pyproject.toml that installs it
EXTRA_BY_MODULE: dict[str, str] = {
    "pyarrow": "bulk",
    "tqdm": "bulk",
    "ray": "ray",
    "sentencepiece": "torch",
    "torch": "torch",
    "transformers": "torch",
    "onnxruntime": "onnx",
    "optimum": "onnx",
    "qdrant_client": "examples",
}


class MissingExtra(ValueError):
    """An optional package is not installed. A ValueError, so the commands' usual one-line error handling
    (`cannot embed: ...`, `cannot start: ...`) reports it."""

    def __init__(self, module: str, purpose: str) -> None:
        package = module.split(".")[0]
        self.module = package
        self.extra = EXTRA_BY_MODULE.get(package)
        command = f"pip install 'iei[{self.extra}]'" if self.extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the {package} package, which is not installed: {command}")


def is_installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtra naming the extra; `purpose` says what needed it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or module).split(".")[0]
        if missing != module.split(".")[0] and missing not in EXTRA_BY_MODULE:
            raise  # the package is there but broken inside: not a missing extra, keep the real error
        raise MissingExtra(missing, purpose) from None
