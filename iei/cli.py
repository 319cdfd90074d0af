"""The `iei` command: `iei serve` starts the HTTP server."""

from __future__ import annotations

import argparse
import logging
import sys

from iei import __version__
from iei.config import Settings, add_settings_arguments, settings_from

log = logging.getLogger("iei")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iei", description="IEI: Image Embedding Inference.")
    parser.add_argument("--version", action="version", version=f"iei {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="Start the HTTP server.",
        description="Serve an image embedding model over HTTP (TEI-style /embed, OpenAI /v1/embeddings). "
                    "Every flag can also be set by the environment variable named in its help.",
    )
    add_settings_arguments(serve)
    return parser


def serve(settings: Settings) -> int:
    # Heavy imports here, so `iei --help` stays fast.
    import uvicorn

    from backends import BackendError
    from iei.engine import EmbeddingEngine
    from iei.models import ModelNotFound
    from iei.server import create_app

    try:
        engine = EmbeddingEngine.load(settings)
    except (ModelNotFound, BackendError, ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
    app = create_app(settings, engine)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                loop="auto", http="auto", timeout_graceful_shutdown=30)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    from iei.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return serve(settings)
    return 1


if __name__ == "__main__":
    sys.exit(main())
