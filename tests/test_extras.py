"""A missing optional package is one line naming the extra to install, never a traceback. Each case runs
in a fresh interpreter where the package is hidden (`sys.modules[name] = None`: both `import` and
`importlib.util.find_spec` then see it as absent, as transformers' availability checks do)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iei.extras import MissingExtra, require
from tests.conftest import SEED_IMAGES
from tests.server_process import REPO


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    return subprocess.run([sys.executable, "-c", f"import sys; {hide}\n{code}"], capture_output=True, text=True,
                          cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          timeout=300, check=False)


def embed_command(*args: str) -> str:
    return f"from iei.cli import main; sys.exit(main({['embed', *args]!r}))"


def one_line_naming(result: subprocess.CompletedProcess, extra: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "pip install" in line]
    assert f"pip install 'iei[{extra}]'" in line
    return line


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(MissingExtra, match=r"^the progress bar needs the tqdm package, which is not installed: "
                                           r"pip install 'iei\[bulk\]'$"):
        require("tqdm", "the progress bar")
    with pytest.raises(MissingExtra, match=r"pip install no_such_module_here$"):
        require("no_such_module_here", "a test")
    assert require("json", "anything").dumps([1]) == "[1]"


def test_parquet_output_without_pyarrow(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bag.png").write_bytes(SEED_IMAGES[0].read_bytes())
    result = run_without(["pyarrow"], embed_command(str(photos), "--output", str(tmp_path / "out"),
                                                    "--model", str(tmp_path / "never-loaded")))
    line = one_line_naming(result, "bulk")
    assert "Parquet output" in line and not (tmp_path / "out").exists()


def test_a_parquet_image_list_without_pyarrow(tmp_path):
    (tmp_path / "list.parquet").write_bytes(b"PAR1")
    result = run_without(["pyarrow"], embed_command(str(tmp_path / "list.parquet"), "--output",
                                                    str(tmp_path / "out.npy"), "--model", "x"))
    one_line_naming(result, "bulk")


def test_ray_engine_without_ray(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bag.png").write_bytes(SEED_IMAGES[0].read_bytes())
    result = run_without(["ray"], embed_command(str(photos), "--output", str(tmp_path / "out.npy"), "--engine", "ray",
                                                "--model", str(tmp_path / "never-loaded"), "--no-progress"))
    assert "--engine ray" in one_line_naming(result, "ray")


def test_siglip_tokenizer_without_sentencepiece(tiny_model):
    folder = tiny_model("siglip")
    code = ("from iei.preprocess.text import load_text_spec\n"
            "try:\n"
            f"    load_text_spec({str(folder)!r}, None, max_length=64, padding='max_length')\n"
            "except ValueError as e:\n"
            "    print(e, file=sys.stderr); sys.exit(2)\n")
    assert "tokenizer" in one_line_naming(run_without(["sentencepiece"], code), "torch")
