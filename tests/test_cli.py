"""The `iei` command line: flags, environment variables, and clean start-up failures."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from iei.cli import build_parser
from iei.config import Settings, settings_from
from tests.server_process import REPO


def parse(*argv: str, env: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *argv]), env or {})


def test_help_documents_every_setting_with_its_env_var():
    help_text = subprocess.run([sys.executable, "-m", "iei", "serve", "--help"], capture_output=True, text=True,
                               cwd=REPO, check=True).stdout
    for field in dataclasses.fields(Settings):
        assert "--" + field.name.replace("_", "-") in help_text
        assert field.metadata["env"][0] in help_text


def test_defaults_match_the_original_server():
    settings = parse()
    assert settings.model == "google/vit-base-patch16-224" and settings.port == 8000


def test_original_env_var_selects_the_model():
    assert parse(env={"IMAGE_EMBEDDING_MODEL": "facebook/deit-base-patch16-224"}).model == "facebook/deit-base-patch16-224"


def test_flags_win_over_env():
    settings = parse("--port", "9001", "--no-draft-decode", env={"PORT": "9000", "IEI_DRAFT_DECODE": "true"})
    assert settings.port == 9001 and settings.draft_decode is False


def test_env_values_are_typed_and_checked():
    settings = parse(env={"IEI_MAX_BATCH_SIZE": "8", "IEI_MAX_BATCH_DELAY_MS": "1.5", "IEI_DRAFT_DECODE": "off"})
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.draft_decode) == (8, 1.5, False)
    with pytest.raises(SystemExit, match="IEI_MAX_BATCH_SIZE"):
        parse(env={"IEI_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(SystemExit, match="IEI_LOG_FORMAT"):
        parse(env={"IEI_LOG_FORMAT": "xml"})
    with pytest.raises(SystemExit, match="max_batch_size"):
        parse("--max-batch-size", "0")


def run_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iei", "serve", "--port", "0", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_unknown_model_in_dummy_mode_fails_clearly():
    result = run_serve("--model", "nobody/no-such-model", "--load-format", "dummy")
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "nobody/no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_local_folder_fails_clearly(tmp_path):
    result = run_serve("--model", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_wrong_pooling_fails_clearly(tiny_model):
    result = run_serve("--model", str(tiny_model("swin")), "--pooling", "cls")
    assert result.returncode == 2 and "cls" in result.stderr and "Traceback" not in result.stderr


def test_http_workers_auto_is_one_on_small_hosts_and_validated():
    from iei.config import auto_http_workers

    assert [auto_http_workers(c) for c in (1, 2, 8, 15, 16, 32, 64, 256)] == [1, 1, 1, 1, 2, 4, 8, 8]
    assert settings_from(None, {"IEI_HTTP_WORKERS": "3"}).frontends == 3
    assert Settings().http_workers == "auto"
    for bad in ("0", "x", "65"):
        with pytest.raises(SystemExit, match="http_workers"):
            settings_from(None, {"IEI_HTTP_WORKERS": bad})


def test_unknown_model_type_fails_clearly_without_pooling(tmp_path):
    """The wrong-vector rule at the command line (docs/models.md): a model type outside the family table does
    not start with a guessed pooling; the message names the type and the two choices."""
    from transformers import ViTMSNConfig, ViTMSNModel

    folder = tmp_path / "vit-msn"
    ViTMSNModel(ViTMSNConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=32)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    result = run_serve("--model", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot start" in result.stderr and "'vit_msn'" in result.stderr
    assert "--pooling mean" in result.stderr and "--pooling pooler" in result.stderr


def test_jpeg_decoder_setting_reaches_the_workers_spec():
    from iei.engine import with_input_limits
    from iei.preprocess.spec import make_spec

    spec = make_spec(resize="fixed", resample=2, resize_height=224, resize_width=224)
    assert with_input_limits(spec, parse()).jpeg_decoder == "auto"
    assert with_input_limits(spec, parse(env={"IEI_JPEG_DECODER": "pillow"})).jpeg_decoder == "pillow"
    with pytest.raises(SystemExit):
        parse("--jpeg-decoder", "turbo")
