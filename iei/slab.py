"""The shared-memory slab: one owner for the layout of the preprocessed images that pass from the
preprocessing workers to the model process without crossing a pipe.

A slab is `slots` fixed-size slots. Each slot holds one image's uint8 pixels, of `SlabLayout.item_shape`:

- fixed-size models (ViT, CLIP, SigLIP, DINO...): (3, H, W), the resized and cropped image;
- variable-resolution models (SigLIP 2 NaFlex): (max_num_patches, patch * patch * 3), the image's patches
  in its own aspect ratio, padded with zeros to the most patches the model takes, plus the image's patch
  grid (rows, cols) in a small int32 side array (`Slab.grids`).

Why a NaFlex slot is sized for the most patches rather than the image's own: a slot is reused by any image,
the free list stays a list of numbers, and the model process gathers a batch with one fancy index, as for
fixed-size images. The cost is memory (256 patches of 16x16x3 bytes = 192 KiB a slot, as much as a 256x256
RGB image) and some padding work in the model; the padding is masked (`pixel_attention_mask`) so it never
changes a vector. The grid rides beside the pixels, in the same segment, so the batcher and every message
stay as they are: slot numbers in, vectors out.

Who does what: the `PreprocessPool` creates (and alone unlinks) the segment; workers attach and write one
slot at a time; the model process attaches and gathers batches; the engine's health probe writes a blank
image (`clear`). No torch, no PIL: every process imports this.
"""

from __future__ import annotations

from multiprocessing.shared_memory import SharedMemory

import msgspec
import numpy as np

_GRID_ALIGN = 8  # the int32 grid array starts on an 8-byte boundary after the pixels


class SlabLayout(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of a slab: plain data, sent to the workers and the model process with its segment name."""

    slots: int
    item_shape: tuple[int, ...]  # uint8 pixels of one slot: (3, H, W), or (max_num_patches, patch*patch*3)
    grids: bool = False  # variable-resolution: each slot also records its patch grid (rows, cols)

    @property
    def pixel_bytes(self) -> int:
        return self.slots * int(np.prod(self.item_shape))

    @property
    def grid_offset(self) -> int:
        return -(-self.pixel_bytes // _GRID_ALIGN) * _GRID_ALIGN

    @property
    def size(self) -> int:
        return self.grid_offset + self.slots * 2 * 4 if self.grids else self.pixel_bytes


class Slab:
    """A mapped slab. `pixels`: uint8 (slots, *item_shape); `grids`: int32 (slots, 2) (rows, cols) of each
    slot's patch grid, or None for fixed-size models. Build with `create` (the owner) or `attach`."""

    def __init__(self, shm: SharedMemory, layout: SlabLayout, *, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        self.layout = layout
        self.name = shm.name
        self.pixels = np.ndarray((layout.slots, *layout.item_shape), dtype=np.uint8, buffer=shm.buf)
        self.grids = (np.ndarray((layout.slots, 2), dtype=np.int32, buffer=shm.buf, offset=layout.grid_offset)
                      if layout.grids else None)

    @classmethod
    def create(cls, layout: SlabLayout) -> "Slab":
        """A new segment; this process owns it and unlinks it on `close`."""
        return cls(SharedMemory(create=True, size=max(1, layout.size)), layout, owner=True)

    @classmethod
    def attach(cls, name: str, layout: SlabLayout) -> "Slab":
        """Map the owner's segment. Workers and the model process are started by multiprocessing and share
        the owner's resource tracker, so attaching registers nothing that could unlink it early."""
        return cls(SharedMemory(name=name), layout, owner=False)

    def gather(self, slots: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch, copied out of the slab: (pixels (B, *item_shape) uint8, grids (B, 2) int32 or None)."""
        return self.pixels[slots], (self.grids[slots] if self.grids is not None else None)

    def clear(self, slot: int) -> None:
        """Write a blank image into `slot` (the health probe): zero pixels, and the smallest grid (1 x 1)
        for a variable-resolution model, since a grid of no patches is not an image."""
        self.pixels[slot] = 0
        if self.grids is not None:
            self.grids[slot] = (1, 1)

    def close(self) -> None:
        del self.pixels, self.grids  # release the buffer views before the map goes
        self._shm.close()
        if self._owner:
            self._shm.unlink()
