"""Cohere's `embedding_types`: one unit vector written as float, base64, int8, uint8, binary or ubinary.

Each mapping is fixed (it never depends on the other vectors of a request), so vectors from different
requests stay comparable, and every one keeps dot products in proportion to the float ones:
- `int8`: round(127 * v), in [-127, 127]. A unit vector's components lie in [-1, 1], so nothing is clipped;
  the rounding keeps cosine to the float vector near 0.9985 at 512 dimensions and 0.998 at 768 (random unit
  vectors; tests/server/test_compat_parsing.py). (Cohere's own models are
  trained for int8 with ranges it does not publish; a generic CLIP or SigLIP has no such ranges.)
- `uint8`: int8 + 128, in [1, 255].
- `ubinary`: one bit per dimension, 1 where v > 0, packed 8 to a byte, first dimension in the high bit
  (numpy's packbits; ceil(D / 8) bytes, the last padded with 0 bits); compare with Hamming distance.
- `binary`: ubinary - 128, in [-128, 127] (the signed form sentence-transformers and Cohere use).
- `base64`: the little-endian float32 bytes, base64 (as OpenAI's `encoding_format: base64`).
"""

from __future__ import annotations

import base64 as b64

import numpy as np

from iei.errors import ValidationFailed
from iei.server.schemas import CohereEmbeddings

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")


def check_embedding_types(types: list[str] | None) -> tuple[str, ...]:
    """The requested types in order, duplicates dropped; default float. Raises ValidationFailed."""
    if types is None:
        return ("float",)
    if not types:
        raise ValidationFailed("`embedding_types` cannot be empty; leave it out for float")
    for i, kind in enumerate(types):
        if kind not in EMBEDDING_TYPES:
            raise ValidationFailed(f"embedding_types[{i}]: unknown type {kind!r}; "
                                   f"choose from {', '.join(EMBEDDING_TYPES)}")
    return tuple(dict.fromkeys(types))


def to_int8(vectors: np.ndarray) -> np.ndarray:
    """(N, D) unit float vectors -> (N, D) int8."""
    return np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)


def to_uint8(vectors: np.ndarray) -> np.ndarray:
    return (to_int8(vectors).astype(np.int16) + 128).astype(np.uint8)


def to_ubinary(vectors: np.ndarray) -> np.ndarray:
    """(N, D) float -> (N, ceil(D / 8)) uint8, the sign bits packed."""
    return np.packbits(vectors > 0, axis=1)


def to_binary(vectors: np.ndarray) -> np.ndarray:
    return (to_ubinary(vectors).astype(np.int16) - 128).astype(np.int8)


def to_base64(vectors: np.ndarray) -> list[str]:
    return [b64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]


def encode_embeddings(vectors: np.ndarray, types: tuple[str, ...]) -> CohereEmbeddings:
    """(N, D) unit float32 vectors -> Cohere's `embeddings` object with each requested type."""
    out = CohereEmbeddings()
    for kind in types:
        if kind == "float":
            out.float_ = vectors.tolist()
        elif kind == "base64":
            out.base64 = to_base64(vectors)
        else:
            setattr(out, kind, _QUANTIZERS[kind](vectors).tolist())
    return out


_QUANTIZERS = {"int8": to_int8, "uint8": to_uint8, "binary": to_binary, "ubinary": to_ubinary}
