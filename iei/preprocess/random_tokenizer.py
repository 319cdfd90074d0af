"""Tokenizers built offline, for `--load-format dummy` of a dual encoder whose real tokenizer is not on disk
(the hub is not needed, nothing is downloaded) and for tests' tiny models.

They tokenise like their family's tokenizer class (CLIP: byte-level BPE; SigLIP: SentencePiece) with a made-up
vocabulary: CLIP gets the 512 byte-level symbols and no merges, SigLIP a SentencePiece model trained on a few
sentences. Token ids are meaningless, like the random weights they go with.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from iei.extras import require

_VERSION = 1  # bump when what is built changes
_SENTENCES = [
    "a photo of a cat", "a photo of a dog", "a leather bag", "a pair of boots", "a winter coat", "a red dress",
    "summer sandals", "a running shoe", "the quick brown fox jumps over the lazy dog 0123456789",
    "pack my box with five dozen liquor jugs", "how vexingly quick daft zebras jump",
]


def random_tokenizer_dir(model_type: str, max_length: int) -> Path:
    """A folder holding a random `model_type` ("clip" or "siglip") tokenizer, built on first use under the
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


_BUILDERS = {"clip": _build_clip, "siglip": _build_siglip, "siglip2": _build_siglip}  # SigLIP 2: SentencePiece too (Gemma)
