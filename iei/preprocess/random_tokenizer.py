"""Tokenizers built offline, for `--load-format dummy` of a dual encoder whose real tokenizer is not on disk
(the hub is not needed, nothing is downloaded) and for tests' tiny models.

They tokenise like their family's tokenizer class with a made-up vocabulary: CLIP and AIMv2 (CLIPTokenizer)
get the 512 byte-level symbols and no merges; SigLIP (SiglipTokenizer), SigLIP 2 (Gemma's tokenizer, as
transformers' SigLIP 2 conversion builds it: no BOS, EOS appended) and MetaCLIP 2 (XLM-V's, an
XLMRobertaTokenizer) a SentencePiece model trained on a few sentences. Token ids are meaningless, like the
random weights they go with.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from iei.extras import require

_VERSION = 2  # bump when what is built changes
_GEMMA_VOCAB_SIZE = 256_000
_SENTENCES = [
    "a photo of a cat", "a photo of a dog", "a leather bag", "a pair of boots", "a winter coat", "a red dress",
    "summer sandals", "a running shoe", "the quick brown fox jumps over the lazy dog 0123456789",
    "pack my box with five dozen liquor jugs", "how vexingly quick daft zebras jump",
]


def random_tokenizer_kind(model_type: str, config_dir: str | None) -> str:
    """Which random tokenizer a model type gets. SigLIP 2's fixed-resolution checkpoints (e.g.
    google/siglip2-base-patch16-224) say model type "siglip" like SigLIP's; their text vocabulary, Gemma's
    256,000 ids, tells them apart (SigLIP's are 32,000 and 250,000)."""
    if model_type == "siglip" and config_dir is not None:
        try:
            config = json.loads((Path(config_dir) / "config.json").read_text())
            if int(config.get("text_config", {}).get("vocab_size", 0)) == _GEMMA_VOCAB_SIZE:
                return "gemma"
        except (OSError, ValueError, TypeError):
            pass
    return model_type


def random_tokenizer_dir(model_type: str, max_length: int) -> Path:
    """A folder holding a random `model_type` tokenizer (a model type of `_BUILDERS`, or a kind from
    `random_tokenizer_kind`), built on first use under the
    system's temporary folder (atomically, so concurrent servers never see half a folder). Raises ValueError
    for other model types."""
    if model_type not in _BUILDERS:
        raise ValueError(f"no offline tokenizer for model type {model_type!r}")
    folder = Path(tempfile.gettempdir()) / "iei-random-tokenizers" / f"{model_type}-{max_length}-v{_VERSION}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        _BUILDERS[model_type](staging, max_length)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def save_random_tokenizer(model_type: str, max_length: int, folder: Path) -> None:
    """Write a random tokenizer's files into `folder` (e.g. next to a tiny model's weights)."""
    _BUILDERS[model_type](Path(folder), max_length)


def _build_clip(folder: Path, max_length: int) -> None:
    """Byte-level BPE with no merges: every byte is a token (ids 0-511), then <|startoftext|> 512 and
    <|endoftext|> 513, the highest id, as in CLIP's vocabulary (legacy CLIP configs find the end of a text
    by argmax over the ids). Saved with tokenizer.json, so AutoTokenizer loads the fast tokenizer."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n")
        slow = CLIPTokenizer(str(Path(raw) / "vocab.json"), str(Path(raw) / "merges.txt"), model_max_length=max_length)
        slow.save_pretrained(folder)
    CLIPTokenizerFast.from_pretrained(folder).save_pretrained(folder)


def _build_siglip(folder: Path, max_length: int) -> None:
    """A small SentencePiece unigram model, wrapped as SiglipTokenizer (lower-cases, strips punctuation)."""
    sentencepiece = require("sentencepiece", "a random SigLIP tokenizer (--load-format dummy)")
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES * 10), model_writer=model, vocab_size=200, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "spiece.model").write_bytes(model.getvalue())
        SiglipTokenizer(str(Path(raw) / "spiece.model"), model_max_length=max_length).save_pretrained(folder)


def _sentencepiece_model(**special: int) -> bytes:
    """A small SentencePiece BPE model trained on a few sentences (ids below 200 plus the special ones)."""
    sentencepiece = require("sentencepiece", "a random SentencePiece tokenizer (--load-format dummy)")

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES * 10), model_writer=model, vocab_size=200, model_type="bpe",
        hard_vocab_limit=False, minloglevel=2, **special,
    )
    return model.getvalue()


def _build_gemma(folder: Path, max_length: int) -> None:
    """Gemma's tokenizer as SigLIP 2 uses it (transformers' convert_siglip2_to_hf: GemmaTokenizerFast with
    add_bos_token=False, add_eos_token=True, right padding): pad 0, eos 1, bos 2, unk 3 as in Gemma's vocabulary."""
    from transformers import GemmaTokenizer, GemmaTokenizerFast

    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "tokenizer.model").write_bytes(_sentencepiece_model(pad_id=0, eos_id=1, bos_id=2, unk_id=3))
        slow = GemmaTokenizer(str(Path(raw) / "tokenizer.model"), add_bos_token=False, add_eos_token=True,
                              padding_side="right", model_max_length=max_length)
        slow.save_pretrained(folder)
    GemmaTokenizerFast.from_pretrained(folder, add_bos_token=False, add_eos_token=True).save_pretrained(folder)


def _build_xlm_roberta(folder: Path, max_length: int) -> None:
    """XLM-V's tokenizer class as MetaCLIP 2 uses it (XLMRobertaTokenizer over a SentencePiece model): <s> 0,
    <pad> 1, </s> 2 (MetaCLIP 2's eos_token_id), <unk> 3, then the pieces, then <mask>."""
    from transformers import XLMRobertaTokenizer, XLMRobertaTokenizerFast

    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "sentencepiece.bpe.model").write_bytes(_sentencepiece_model(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
        XLMRobertaTokenizer(str(Path(raw) / "sentencepiece.bpe.model"), model_max_length=max_length).save_pretrained(folder)
    XLMRobertaTokenizerFast.from_pretrained(folder).save_pretrained(folder)


# model type (or kind, see random_tokenizer_kind) -> builder
_BUILDERS = {"clip": _build_clip, "siglip": _build_siglip, "siglip2": _build_gemma, "gemma": _build_gemma,
             "metaclip_2": _build_xlm_roberta, "aimv2": _build_clip}
