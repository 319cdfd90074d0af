"""SigLIP 2 NaFlex's position embeddings for a patch grid, in numpy: what the exported graph takes as an input.

NaFlex resizes its learned (S, S, D) position-embedding table to each image's own patch grid with
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)`, one image at a time.
That loop over the batch, with sizes read from the data, is what a traced ONNX graph cannot hold (it would
bake in the example's sizes). So the image graph (`backends.pooling.NaflexImageGraph`, run by torch and
exported to ONNX alike) takes the resized embeddings as an input, and every backend computes them here,
without torch, once per grid (there are few distinct grids: they are cached).

The resize is separable: for each axis a (out, in) matrix of the antialiased triangle-filter weights that
torch uses (its `_upsample_bilinear2d_aa`, derived from Pillow's resampling: the filter is stretched by the
scale when shrinking, weights normalised over the taps inside the image), so
resized[:, :, d] = rows_matrix @ table[:, :, d] @ cols_matrix.T. Equal to torch within float32 rounding
(tested: max |numpy - torch| ~1e-6 on a 16 x 16 table for every grid up to 256 patches).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=256)
def aa_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """float64 (out_size, in_size): row i holds the weights of the input samples for output sample i."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: half-width 1, stretched when shrinking
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * inv))
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights


def patch_mask(grids: np.ndarray, length: int) -> np.ndarray:
    """bool (B, length): True for the patches of each image's own (rows, cols) grid, False for the padding."""
    counts = grids[:, 0].astype(np.int64) * grids[:, 1]
    return np.arange(length)[None, :] < counts[:, None]


class PositionEmbeddings:
    """The model's (S, S, D) position-embedding table and its resized copies per patch grid. Owned by the
    model thread (the cache is not locked)."""

    def __init__(self, table: np.ndarray) -> None:
        if table.ndim != 3 or table.shape[0] != table.shape[1]:
            raise ValueError(f"expected a square (S, S, D) position-embedding table, got {table.shape}")
        self._table = np.asarray(table, dtype=np.float64)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def for_grid(self, rows: int, cols: int) -> np.ndarray:
        """float32 (rows * cols, D): the table resized to the grid, row-major, as the patches are laid out."""
        key = (int(rows), int(cols))
        if key not in self._cache:
            size = self._table.shape[0]
            resized = np.einsum("ri,ijd,cj->rcd", aa_bilinear_weights(size, key[0]), self._table,
                                aa_bilinear_weights(size, key[1]))
            self._cache[key] = resized.reshape(key[0] * key[1], -1).astype(np.float32)
        return self._cache[key]

    def batch(self, grids: np.ndarray, length: int) -> np.ndarray:
        """float32 (B, length, D) for int (B, 2) grids. Past an image's own patches, the rows repeat its first
        position embedding, as transformers pads them (those patches are masked out anyway)."""
        out = np.empty((len(grids), length, self._table.shape[2]), dtype=np.float32)
        for i, (rows, cols) in enumerate(grids):
            resized = self.for_grid(rows, cols)
            out[i, : len(resized)] = resized
            out[i, len(resized):] = resized[0]
        return out
