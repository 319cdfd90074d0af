"""`TextSpec` and tokenisation for dual encoders (CLIP, SigLIP): texts become token-id arrays in the
preprocessing workers, and a batch of them becomes padded (B, L) arrays for the model.

Token ids are small (at most 77 int32 for CLIP, 64 for SigLIP), so they travel inside the msgpack frames
(worker -> event loop -> model process) instead of a shared-memory slab: a second slab would need its own
slot bookkeeping to save copying a few hundred bytes.

Tokenisation is the model's own tokenizer (`AutoTokenizer`), truncated to the model's text length and, for
SigLIP, padded to it (SigLIP was trained on texts padded to 64 tokens). This module imports transformers only
inside functions: workers of image-only models never pay for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import msgspec
import numpy as np

from backends.base import ModelInfo
from iei.errors import InputError
from iei.extras import MissingExtra, is_installed
from iei.models import ModelSource
from iei.preprocess.random_tokenizer import random_tokenizer_dir, random_tokenizer_kind

log = logging.getLogger("iei.preprocess")

# Any of these in a model folder means it ships its own tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


class TextSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a worker tokenises one text (msgpack-encoded and sent to the workers)."""

    source: str  # folder or hub id for AutoTokenizer.from_pretrained
    revision: str | None = None
    max_length: int  # texts are truncated to this many tokens (special tokens included)
    pad_to_max_length: bool  # SigLIP: every text padded to max_length
    pad_id: int
    random: bool = False  # a random tokenizer built offline for --load-format dummy


def has_tokenizer(folder: str | None) -> bool:
    return folder is not None and any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES)


def load_text_spec(source: str, revision: str | None, *, max_length: int, padding: str, random: bool = False) -> TextSpec:
    """Read the tokenizer at `source` once (in the server process) into a spec. `max_length` is the model's
    text length; `padding` is "longest" or "max_length". Raises ValueError when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except Exception as e:
        if not is_installed("sentencepiece") and "sentencepiece" in str(e).lower():
            raise MissingExtra("sentencepiece", f"the model's tokenizer ({source})") from None
        raise ValueError(f"the model's tokenizer could not be loaded from {source!r}: {e}") from e
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id or 0
    limit = tokenizer.model_max_length if isinstance(tokenizer.model_max_length, int) else max_length
    return TextSpec(source=source, revision=revision, max_length=min(max_length, limit),
                    pad_to_max_length=padding == "max_length", pad_id=int(pad_id), random=random)


class Tokenizer:
    """A worker's tokenizer (workers of image-only models have none)."""

    def __init__(self, spec: TextSpec) -> None:
        self._spec = spec
        self._tokenizer: Any = None

    def load(self) -> None:
        """Load the tokenizer now (importing transformers takes seconds: a worker does it before it reports
        ready, not on a client's first text)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._spec.source, revision=self._spec.revision)

    def __call__(self, text: str) -> np.ndarray:
        """One text -> int32 (L,) token ids. Raises InputError for a text the tokenizer rejects."""
        self.load()
        if not isinstance(text, str):
            raise InputError("expected a string")
        padding = "max_length" if self._spec.pad_to_max_length else False
        try:
            ids = self._tokenizer(text, truncation=True, max_length=self._spec.max_length, padding=padding)["input_ids"]
        except Exception:  # e.g. lone surrogates; the text is the client's, the wording ours
            raise InputError("the text could not be tokenised") from None
        return np.asarray(ids, dtype=np.int32)


def text_spec_for(source: ModelSource, info: ModelInfo) -> TextSpec | None:
    """The tokenizer spec for a model with a text tower (None for image-only models). With dummy weights and no
    tokenizer on disk, a random one is built offline (and logged as such). Raises ValueError."""
    if "text" not in info.modalities or info.text_max_length is None:
        return None
    folder, random = source.processor_source, False
    if info.random_weights and not has_tokenizer(folder):
        kind = random_tokenizer_kind(info.model_type, source.config_dir)
        folder, random = str(random_tokenizer_dir(kind, info.text_max_length)), True
        log.warning("!!! RANDOM TOKENIZER: %r has no tokenizer on disk; texts are tokenised with a made-up %s "
                    "vocabulary (for tests and benchmarks, like the random weights) !!!", source.model_id, kind)
    return load_text_spec(folder, None if random else source.revision, max_length=info.text_max_length,
                          padding=info.text_padding or "longest", random=random)


def pad_tokens(token_ids: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a batch of token-id arrays to its longest: (input_ids int32 (B, L), attention_mask uint8 (B, L))."""
    length = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(token_ids), length), dtype=np.uint8)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
