"""Parsing a job's JSONL body (cheap, up-front) and reading path inputs inside the input root."""

from __future__ import annotations

import os

import pytest

from iei.errors import InputError, ValidationFailed
from iei.jobs.inputs import parse_job_lines, read_path_input
from iei.jobs.store import JobInput


def parse(body: bytes, *, max_inputs: int = 10, paths_allowed: bool = True) -> list[JobInput]:
    return parse_job_lines(body, max_inputs=max_inputs, paths_allowed=paths_allowed)


def test_lines_become_indexed_inputs_and_blank_lines_are_skipped():
    body = b'{"image": "AAAA"}\n\n{"path": "a/b.png"}\r\n  \n{"image": "BBBB", "extra": 1}\n'
    assert parse(body) == [JobInput(0, "image", "AAAA"), JobInput(1, "path", "a/b.png"), JobInput(2, "image", "BBBB")]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"image": "A"}\n{"image": \n', "line 2: invalid JSON"),
    (b'{"image": "A"}\n[1, 2]\n', "line 2: Expected `object`"),
    (b'{"image": 5}', "line 1: Expected `str | null`"),
    (b'{"image": "A", "path": "x"}', 'line 1: give exactly one of "image"'),
    (b"{}", 'line 1: give exactly one of "image"'),
    (b"", "the job holds no input"),
    (b"\n \n", "the job holds no input"),
])
def test_malformed_bodies_are_refused_naming_the_line(body, message):
    with pytest.raises(ValidationFailed, match=message.replace("[", r"\[").replace("|", r"\|")):
        parse(body)


def test_path_inputs_need_an_input_root():
    with pytest.raises(ValidationFailed, match="line 1: .*--batch-input-root"):
        parse(b'{"path": "a.png"}', paths_allowed=False)


def test_the_line_limit_is_checked_before_reading_on():
    with pytest.raises(ValidationFailed, match="more than 2 lines"):
        parse(b'{"image": "A"}\n' * 3 + b"not even json", max_inputs=2)


def test_paths_resolve_inside_the_root_only(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"pixels")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "link")
    assert read_path_input("sub/a.png", str(root)) == b"pixels"
    assert read_path_input(str(root / "sub" / "a.png"), str(root)) == b"pixels"
    for escape in ("../secret", "sub/../../secret", str(tmp_path / "secret"), "link"):
        with pytest.raises(InputError, match="outside the batch input root"):
            read_path_input(escape, str(root))
    with pytest.raises(InputError, match="cannot be read: No such file"):
        read_path_input("missing.png", str(root))
    with pytest.raises(InputError, match="cannot be read"):
        read_path_input("sub", str(root))
