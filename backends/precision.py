"""Which floating-point precision a model runs at on this host, and the parity probe that checks it.

`--dtype auto` on the CPU picks bfloat16 where the CPU has bf16 units (AMX-BF16 or AVX512-BF16) and float32
elsewhere: without those units bf16 matrix products are emulated and slower than float32. The backend then
runs a fixed probe batch through the loaded model at float32 and at the chosen precision; a vector below
`PARITY_MIN_COSINE` to its float32 twin sends the model back to float32, and the reason says so.

No torch here: the CPU flags, the decision and the probe inputs are plain Python and numpy, so they are
tested without a model and shared by every backend (`backends.onnx_providers.cpu_isa` reads the same flags).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

PARITY_MIN_COSINE = 0.9999  # every probe vector at the chosen precision against float32
# The candidate's warm probe pass must beat float32's by this much: where the two are about equal (tiny models)
# a timing on a shared host would flip the choice from one start to the next, and float32 is the exact one.
PROBE_MIN_SPEEDUP = 1.1
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of bf16 units, best first
PROBE_IMAGES = 4
PROBE_TEXT_LENGTH = 16
_PROBE_SEED = 18


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (Linux x86); empty where there is no such file
    or no `flags` line (other systems, ARM). Read at model load, never at import."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def host_flags() -> frozenset[str]:
    """This host's CPU flags: what the backends decide on (tests replace it to fake a CPU)."""
    return cpu_flags()


def bf16_unit(flags: frozenset[str]) -> str | None:
    """The CPU's bf16 matrix unit named as in /proc/cpuinfo (amx_bf16 before avx512_bf16), or None."""
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


class PrecisionChoice(msgspec.Struct, frozen=True):
    """A precision to try and why. `probe`: whether parity with float32 must be checked before serving."""

    dtype: str  # float32 | float16 | bfloat16
    why: str  # e.g. "CPU has avx512_bf16"
    probe: bool = False

    @property
    def reason(self) -> str:
        """What the start log and /info (`model_dtype_reason`) say, e.g. "bfloat16: CPU has amx_bf16"."""
        return f"{self.dtype}: {self.why}"


def choose(requested: str, device_type: str, flags: frozenset[str]) -> PrecisionChoice:
    """The precision for `requested` (auto | float32 | float16 | bfloat16) on a "cpu" or "cuda" device.
    Only `auto` on the CPU picking bfloat16 is probed: an explicit dtype is the operator's call."""
    if requested != "auto":
        return PrecisionChoice(requested, "requested")
    if device_type == "cuda":
        return PrecisionChoice("float16", "auto on a CUDA device")
    unit = bf16_unit(flags)
    if unit is None:
        return PrecisionChoice("float32", "the CPU has no bf16 units (amx_bf16, avx512_bf16), where bfloat16 "
                                          "would be emulated and slower")
    return PrecisionChoice("bfloat16", f"CPU has {unit}", probe=True)


def probe_verdict(choice: PrecisionChoice, cosine: float, failure: str | None = None,
                  seconds: tuple[float, float] | None = None) -> tuple[bool, str]:
    """(keep the candidate?, the reason to report) after the probe gave `cosine`, the smallest over all
    probe vectors (`failure`: why the candidate could not run the probe at all; `seconds`: the warm probe
    pass at float32 and at the candidate). The candidate must keep parity and be faster (by PROBE_MIN_SPEEDUP): bf16 units pay off
    on real models (ViT-B/16 x3.6 on a Zen 5), but a tiny model can be slower in bf16 than in float32."""
    if failure is not None or cosine < PARITY_MIN_COSINE:
        what = failure or f"min cosine to float32 {cosine:.6f} < {PARITY_MIN_COSINE}"
        return False, f"float32: {choice.dtype} ({choice.why}) failed the parity probe: {what}"
    timing = ""
    if seconds is not None:
        reference, candidate = seconds
        if candidate * PROBE_MIN_SPEEDUP > reference:
            return False, (f"float32: {choice.dtype} ({choice.why}) kept parity (min cosine {cosine:.6f}) but was "
                           f"not x{PROBE_MIN_SPEEDUP} faster on the probe batch ({candidate * 1e3:.1f} ms vs "
                           f"{reference * 1e3:.1f} ms)")
        timing = f", x{reference / max(candidate, 1e-9):.1f} faster than float32 on the probe batch"
    return True, f"{choice.reason}; probe min cosine {cosine:.6f}{timing}"


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows of two (B, D) arrays (float64 arithmetic).
    A row that is zero in one and not the other, or not finite, counts as -1."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return -1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, -1.0))
    return float(cos.min()) if len(cos) else 1.0


def probe_images(shape: tuple[int, ...]) -> np.ndarray:
    """A fixed uint8 probe batch of `shape` (B, ...): half smooth gradients (photo-like, where rounding
    errors would show) and half seeded noise (every input value in range). Same bytes in every process."""
    rng = np.random.default_rng(_PROBE_SEED)
    batch = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ramp = np.linspace(0, 255, num=int(np.prod(shape[1:])), dtype=np.float64).reshape(shape[1:])
    for i in range(0, shape[0], 2):
        batch[i] = ((ramp * (i + 1)) % 256).astype(np.uint8)
    return batch


def probe_texts(vocab_size: int, max_length: int, eos_token_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A fixed probe batch of token ids and masks, int64 (4, L) with L = min(16, max_length): texts of
    several lengths padded on the right, each ending in the end-of-text token where the model has one
    (CLIP pools at it)."""
    length = max(2, min(PROBE_TEXT_LENGTH, max_length))
    rng = np.random.default_rng(_PROBE_SEED)
    ids = rng.integers(1, max(2, vocab_size - 1), size=(4, length), dtype=np.int64)
    mask = np.zeros((4, length), dtype=np.int64)
    for row, used in enumerate((length, length - 1, length // 2, 2)):
        mask[row, :used] = 1
        ids[row, used:] = 0
        if eos_token_id is not None and 0 <= eos_token_id < vocab_size:
            ids[row, used - 1] = eos_token_id
    return ids, mask
