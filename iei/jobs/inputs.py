"""A batch job's inputs: one JSON object per line, `{"image": "<base64>"}` or `{"path": "..."}`.

`parse_job_lines` is the cheap, up-front validation of a submitted body (no image is decoded):
malformed lines refuse the whole job, naming the line. `read_path_input` reads a path input when
the runner gets to it, refusing any path whose real location is outside the input root.
"""

from __future__ import annotations

import os

import msgspec

from iei.errors import InputError, ValidationFailed
from iei.jobs.store import JobInput


class _Line(msgspec.Struct):
    image: str | None = None
    path: str | None = None


_decode_line = msgspec.json.Decoder(_Line).decode


def parse_job_lines(body: bytes, *, max_inputs: int, paths_allowed: bool) -> list[JobInput]:
    """The inputs of a JSONL body, indexed 0.. in line order; blank lines are skipped (so the index
    counts non-blank lines). Raises ValidationFailed naming the first bad line (1-based)."""
    inputs: list[JobInput] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        if len(inputs) == max_inputs:
            raise ValidationFailed(f"the job has more than {max_inputs} lines; the limit is {max_inputs} "
                                   "(batch_max_inputs)")
        inputs.append(_parse_line(line, number, len(inputs), paths_allowed))
    if not inputs:
        raise ValidationFailed("the job holds no input: send one JSON object per line, "
                               '{"image": "<base64>"} or {"path": "..."}')
    return inputs


def _parse_line(line: bytes, number: int, index: int, paths_allowed: bool) -> JobInput:
    try:
        item = _decode_line(line)
    except msgspec.ValidationError as e:
        raise ValidationFailed(f"line {number}: {e}") from None
    except msgspec.DecodeError as e:
        raise ValidationFailed(f"line {number}: invalid JSON ({e})") from None
    if (item.image is None) == (item.path is None):
        raise ValidationFailed(f'line {number}: give exactly one of "image" (base64) or "path"')
    if item.image is not None:
        return JobInput(index, "image", item.image)
    if not paths_allowed:
        raise ValidationFailed(f'line {number}: "path" inputs are disabled on this server (it must be started '
                               "with --batch-input-root)")
    return JobInput(index, "path", item.path)  # type: ignore[arg-type]


def read_path_input(path: str, root: str) -> bytes:
    """The bytes of the file `path` names (relative to `root`, or absolute), if its real location
    (symlinks resolved) is inside `root`. Blocking: run it off the event loop. Raises InputError."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))
    if os.path.commonpath([real_root, real]) != real_root:
        raise InputError(f"path {path!r} is outside the batch input root")
    try:
        with open(real, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "unreadable"
        raise InputError(f"path {path!r} cannot be read: {reason}") from None
