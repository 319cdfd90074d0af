"""The README runs as pasted: every ```bash and ```python block, run against a real server.

How a block is run:
- in a fresh copy of the checkout's layout (a temporary folder holding links to the repository's files,
  `.venv` linked to the interpreter running the tests, `../shared` to the shared test data), so the
  README's relative paths (`../shared/testdata/...`, `.venv/bin/...`) resolve as they do for a user, and
  the files the examples write (`vectors/`, `images.jsonl`) land in the temporary folder;
- bash blocks with `bash -e`, python blocks as a script with the tests' interpreter;
- against a server started as `make serve` starts it (`iei serve --model google/vit-base-patch16-224
  --load-format dummy`), on a free port: the one edit made to a block is `localhost:8000` -> that port.

Markers, an HTML comment on the line before a block:
- `<!-- readme-test: skip REASON -->`: not run; the skip and its reason show in the test report.
- `<!-- readme-test: model=HUB_ID -->`: run against a server of that model with `--load-format dummy`
  (a model the catalog bundles, so no hub is needed).

A block passes when it exits 0, prints something, prints no error body (`"error":`), and the server
answered none of its embedding requests with an error (the access log's statuses).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.server_process import REPO, ServerProcess, running_server

pytestmark = pytest.mark.slow

DEFAULT_MODEL = "google/vit-base-patch16-224"  # what `make serve` serves (Makefile's MODEL)
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, if marked skip
    model: str


def readme_blocks(text: str) -> list[Block]:
    """The bash/sh/python blocks of `text`, with their markers."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        start, lang = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        skip, model = None, DEFAULT_MODEL
        if marker:
            directive = marker.group(1)
            if directive.startswith("skip"):
                skip = directive[len("skip"):].strip() or "marked skip"
            elif directive.startswith("model="):
                model = directive[len("model="):].strip()
            else:
                raise ValueError(f"README.md:{start}: unknown readme-test marker {directive!r}")
        if lang in ("bash", "sh", "python"):
            blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1:end]) + "\n", skip, model))
        i = end + 1
    return blocks


# README order within a model; the default model's blocks first, so each server starts once.
BLOCKS = sorted(readme_blocks((REPO / "README.md").read_text()), key=lambda b: (b.model != DEFAULT_MODEL, b.model))


def test_the_readme_has_runnable_blocks_and_every_skip_says_why():
    assert sum(b.skip is None for b in BLOCKS) >= 5
    assert all(b.skip for b in BLOCKS if b.skip is not None)
    assert any("make serve" in b.code for b in BLOCKS)  # the README's two commands stay
    assert any("make test" in b.code for b in BLOCKS)


def test_markers_are_read():
    text = ("<!-- readme-test: skip needs the hub -->\n```bash\necho a\n```\n\n"
            "<!-- readme-test: model=org/m -->\n```python\nprint(1)\n```\n```json\n{}\n```\n")
    assert readme_blocks(text) == [Block(2, "bash", "echo a\n", "needs the hub", DEFAULT_MODEL),
                                   Block(7, "python", "print(1)\n", None, "org/m")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's checkout, as far as the README's relative paths go."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "iei"
    repo.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".venv", ".git"):
            (repo / entry.name).symlink_to(entry)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    (root / "shared").symlink_to(REPO.parent / "shared")
    return repo


class Servers:
    """One server at a time (2 cores; vit-base and CLIP are not small), by model, kept while blocks use it."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.model: str | None = None
        self.server: ServerProcess | None = None
        self._stack = contextlib.ExitStack()

    def __getitem__(self, model: str) -> ServerProcess:
        if model != self.model:
            self._stack.close()
            self.server = self._stack.enter_context(running_server(
                "--model", model, "--load-format", "dummy", "--preprocess-workers", "1",
                log_dir=self.log_dir, env={"IMAGE_EMBEDDING_MODEL": ""}, timeout_s=300))
            self.model = model
        return self.server  # type: ignore[return-value]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def servers(server_logs) -> Iterator[Servers]:
    started = Servers(server_logs)
    try:
        yield started
    finally:
        started.close()


_ERROR_STATUS = re.compile(r"\bstatus=([45]\d\d)\b")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}-{b.lang}" for b in BLOCKS])
def test_readme_block_runs_as_pasted(block: Block, servers, workdir):
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    server = servers[block.model]
    port = server.url.rsplit(":", 1)[1]
    code = block.code.replace("localhost:8000", f"localhost:{port}")
    log_before = len(server.log())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if block.lang == "python":
        script = workdir / f"readme_block_{block.line}.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-e", "-c", code]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False)
    where = f"README.md:{block.line}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, where
    assert result.stdout.strip(), where
    assert '"error":' not in result.stdout, where
    assert not _ERROR_STATUS.findall(server.log()[log_before:]), where + "\n--- server log\n" + server.log()[log_before:]
