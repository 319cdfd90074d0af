"""Texts for dual encoders: the worker's tokenisation matches the model's tokenizer, batches pad correctly,
random tokenizers are built offline, and the text spec follows the model."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from transformers import AutoTokenizer

from backends.base import ModelInfo
from iei.errors import InputError
from iei.models import ModelSource, resolve_model
from iei.preprocess.pool import PreprocessPool
from iei.preprocess.random_tokenizer import random_tokenizer_dir
from iei.preprocess.spec import load_spec, make_spec
from iei.preprocess.text import TextSpec, Tokenizer, load_text_spec, pad_tokens, text_spec_for
from iei.preprocess.worker import NO_SLOT, STATUS_INPUT_ERROR, STATUS_OK, Task, run_task
from tests.model_factory import TEXT_MAX_LENGTH, make_tiny_model
from tests.server_process import REPO

TEXTS = ["a photo of a cat", "", "A Photo, of a CAT!", "naïve café – 東京 🐈", "word " * 200]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny_model(family, root) for family in ("clip", "siglip")}


def _spec(folder, family) -> TextSpec:
    padding = "max_length" if family == "siglip" else "longest"
    return load_text_spec(str(folder), None, max_length=TEXT_MAX_LENGTH[family], padding=padding)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_worker_tokenises_as_the_models_tokenizer(tiny_dir, family):
    spec = _spec(tiny_dir[family], family)
    tokenize = Tokenizer(msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=TextSpec))  # as a worker gets it
    reference = AutoTokenizer.from_pretrained(tiny_dir[family])
    padding = "max_length" if family == "siglip" else False
    for text in TEXTS:
        want = reference(text, truncation=True, padding=padding, max_length=TEXT_MAX_LENGTH[family])["input_ids"]
        got = tokenize(text)
        assert got.dtype == np.int32 and got.tolist() == want, text
        assert len(got) <= TEXT_MAX_LENGTH[family]
    assert len(tokenize("word " * 200)) == TEXT_MAX_LENGTH[family]  # truncated, end token kept
    assert spec.pad_to_max_length == (family == "siglip")


@pytest.mark.parametrize("family", ["clip", "siglip"])
async def test_pool_workers_tokenise_without_loading_torch(tiny_dir, family):
    """A worker's tokenizer gives the model tokenizer's ids without torch in the worker (torch would cost
    each worker ~6 s of start-up and ~250 MB)."""
    spec = _spec(tiny_dir[family], family)
    reference = AutoTokenizer.from_pretrained(tiny_dir[family])
    padding = "max_length" if family == "siglip" else False
    pool = PreprocessPool(make_spec(resize="fixed", resample=2, resize_height=8, resize_width=8), workers=1, slots=1,
                          text_spec=spec)
    await pool.start()
    try:
        for text in TEXTS:
            want = reference(text, truncation=True, padding=padding, max_length=TEXT_MAX_LENGTH[family])["input_ids"]
            assert (await pool.tokenize(text)).tolist() == want, text
        (pid,) = pool.worker_pids
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    finally:
        await pool.close()


def test_fork_server_preload_has_the_tokenizer_classes_without_torch():
    """What the workers' fork server imports for a text model (`start_worker_server(tokenizers=True)`)."""
    code = "import sys, iei.preprocess.tokenizer_stack; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_text_task_replies_with_token_ids_and_no_slot(tiny_dir):
    tokenize = Tokenizer(_spec(tiny_dir["clip"], "clip"))
    slab = np.zeros((1, 3, 4, 4), np.uint8)
    reply = run_task(Task(7, NO_SLOT, 2, "a cat"), None, slab, tokenize)
    assert reply.status == STATUS_OK and np.frombuffer(reply.tokens, np.int32).tolist() == tokenize("a cat").tolist()
    assert not slab.any()
    refused = run_task(Task(8, NO_SLOT, 2, "a cat"), None, slab, None)  # an image-only pool
    assert refused.status == STATUS_INPUT_ERROR and "no text" in refused.message


def test_untokenisable_text_is_an_input_error(tiny_dir):
    with pytest.raises(InputError, match="could not be tokenised"):
        Tokenizer(_spec(tiny_dir["clip"], "clip"))("lone surrogate \ud800")


def test_pad_tokens_right_pads_to_the_longest():
    ids, mask = pad_tokens([np.array([5, 6, 7], np.int32), np.array([5], np.int32)], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [5, 9, 9]] and ids.dtype == np.int32
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]] and mask.dtype == np.uint8


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_random_tokenizer_is_built_offline_once(family):
    folder = random_tokenizer_dir(family, TEXT_MAX_LENGTH[family])
    assert random_tokenizer_dir(family, TEXT_MAX_LENGTH[family]) == folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert len(ids) > 2 and max(ids) < 520  # fits the tiny models' vocabularies
    if family == "clip":  # the end token is the highest id, as in CLIP's real vocabulary
        assert ids[-1] == max(tokenizer.get_vocab().values())
    with pytest.raises(ValueError, match="no offline tokenizer"):
        random_tokenizer_dir("dinov2", 8)


def _info(model_type="clip", modalities=("image", "text"), random_weights=False) -> ModelInfo:
    return ModelInfo(model_id="m", model_sha=None, model_type=model_type, backend="torch", device="cpu",
                     dtype="float32", pooling="projection", embedding_dim=16, image_size=(224, 224),
                     modalities=modalities, text_max_length=77 if "text" in modalities else None,
                     text_padding="longest" if "text" in modalities else None, random_weights=random_weights)


def test_text_spec_for_follows_the_model(tiny_dir, caplog):
    assert text_spec_for(ModelSource(model_id="x"), _info(modalities=("image",))) is None
    own = text_spec_for(ModelSource(model_id=str(tiny_dir["clip"])), _info())
    assert own.source == str(tiny_dir["clip"]) and not own.random and own.max_length == 77 and own.pad_id == 513
    with caplog.at_level(logging.WARNING):
        source = resolve_model("openai/clip-vit-base-patch32", None, "dummy")  # the catalog holds no tokenizer
        random = text_spec_for(source, _info(random_weights=True))
    assert random.random and "RANDOM TOKENIZER" in caplog.text
    assert random.source == str(random_tokenizer_dir("clip", 77))


@pytest.mark.parametrize("model_id", ["openai/clip-vit-base-patch32", "google/siglip-base-patch16-224",
                                      "facebook/dinov2-small", "google/siglip2-base-patch16-224",
                                      "facebook/metaclip-2-worldwide-l14", "apple/aimv2-large-patch14-224-lit"])
def test_retrieval_catalog_preprocessing_is_supported(model_id):
    spec = load_spec(resolve_model(model_id, None, "dummy").processor_source)
    assert (spec.output_height, spec.output_width) == (224, 224)


@pytest.mark.parametrize(("kind", "cls_name", "first", "last"), [
    ("gemma", "GemmaTokenizerFast", None, 1),  # SigLIP 2: no BOS, EOS (1) appended, as its conversion builds it
    ("metaclip_2", "XLMRobertaTokenizerFast", 0, 2),  # XLM-V: <s> 0 ... </s> 2 (MetaCLIP 2's eos_token_id)
    ("aimv2", "CLIPTokenizerFast", 512, 513),  # AIMv2 LiT: CLIP's tokenizer
])
def test_random_tokenizers_of_the_2025_families(kind, cls_name, first, last):
    tokenizer = AutoTokenizer.from_pretrained(random_tokenizer_dir(kind, 64))
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert type(tokenizer).__name__ == cls_name and ids[-1] == last
    assert max(ids) < (520 if kind == "aimv2" else 256)  # within the tiny models' vocabularies
    if first is not None:
        assert ids[0] == first
    else:
        assert ids[0] != tokenizer.bos_token_id


def test_siglip2_fixres_gets_a_gemma_tokenizer_when_random(caplog):
    """SigLIP 2 FixRes says model type "siglip"; its 256,000-id text vocabulary (Gemma's) picks the tokenizer."""
    info = msgspec.structs.replace(_info(model_type="siglip", random_weights=True), text_max_length=64,
                                   text_padding="max_length")
    with caplog.at_level(logging.WARNING):
        spec = text_spec_for(resolve_model("google/siglip2-base-patch16-224", None, "dummy"), info)
    assert spec.source == str(random_tokenizer_dir("gemma", 64)) and spec.pad_to_max_length and "gemma" in caplog.text
    siglip = text_spec_for(resolve_model("google/siglip-base-patch16-224", None, "dummy"), info)
    assert siglip.source == str(random_tokenizer_dir("siglip", 64))
