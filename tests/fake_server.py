"""`python -m tests.fake_server --port P --delay-ms D [--setting value ...]`: the FakeBackend behind a
real uvicorn server in a process of its own, for load tests whose load generator must not share a GIL
with the server. Settings flags are `iei serve`'s (e.g. `--max-batch-size 4`)."""

from __future__ import annotations

import argparse

import uvicorn

from iei.config import add_settings_arguments, settings_from
from iei.engine import EmbeddingEngine
from iei.model_runner import ThreadRunner
from iei.server import create_app
from tests.fakes import SPEC, FakeBackend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=0.0, help="model time per batch")
    add_settings_arguments(parser)
    args = parser.parse_args()
    settings = settings_from(args, environ={}).replace(model="fake", preprocess_workers=args.preprocess_workers or 1)
    app = create_app(settings, EmbeddingEngine(settings, ThreadRunner(FakeBackend(delay_s=args.delay_ms / 1000)), SPEC))
    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
