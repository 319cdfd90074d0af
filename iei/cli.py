"""The `iei` command: `iei serve` starts the HTTP server; `iei export` exports a model to ONNX;
`iei embed` embeds a folder or list of images offline (`iei.bulk`)."""

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
    export = commands.add_parser(
        "export", help="Export a model to ONNX ahead of time.",
        description="Export MODEL's embedding (model + pooling) to ONNX into DIR, for `iei serve --backend onnx "
                    "--model DIR` (or tensorrt). Runs offline on the CPU.",
    )
    export.add_argument("model", help="Hugging Face hub id or local folder.")
    export.add_argument("--output", required=True, help="Folder to write (created; must not hold another export).")
    export.add_argument("--revision", default=None, help="Model revision on the hub.")
    export.add_argument("--load-format", default="auto", choices=("auto", "dummy"),
                        help="dummy: RANDOM weights built from the config (tests, benchmarks).")
    export.add_argument("--pooling", default=None, help="mean, cls, pooler, projection (CLIP) or cls+mean (DINOv2); "
                        "default: the family's.")
    export.add_argument("--optimize", default="O2", choices=("none", "O1", "O2", "O3"), help="Graph optimisation level.")
    export.add_argument("--quantize", default="none", choices=("none", "int8"), help="int8: dynamic int8 (CPU provider).")
    export.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="fp16: a float16 graph (CUDA provider).")
    export.add_argument("--opset", type=int, default=0, help="ONNX opset (0: the exporter's default).")
    from iei.bulk.command import add_embed_arguments

    add_embed_arguments(commands.add_parser(
        "embed", help="Embed a folder or list of images offline (no HTTP).",
        description="Embed every image of INPUT into OUT with the same preprocessing, backend and normalisation "
                    "as `iei serve`, in this process or on Ray Data. Resumable; bad files are reported and skipped.",
    ))
    return parser


def export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backends import BackendConfig, BackendError
    from iei.models import ModelNotFound, resolve_model
    from iei.preprocess.spec import load_spec

    if args.quantize == "int8" and args.dtype == "fp16":
        log.error("cannot export: --quantize int8 and --dtype fp16 exclude each other")
        return 2
    out = Path(args.output).expanduser()
    if out.exists() and any(out.iterdir()):
        log.error("cannot export: %s exists and is not empty", out)
        return 2
    try:
        from backends.onnx_export import export_model
        from backends.onnx_manifest import ExportOptions

        source = resolve_model(args.model, args.revision, args.load_format)
        spec = load_spec(source.processor_source, source.revision)  # the pixel size the graph is traced at
        config = BackendConfig(model=args.model, revision=args.revision, load_format=source.load_format,
                               config_dir=source.config_dir, pooling=args.pooling, device="cpu",
                               image_size=(spec.output_height, spec.output_width), max_num_patches=spec.max_num_patches)
        precision = "int8" if args.quantize == "int8" else args.dtype
        manifest = export_model(config, ExportOptions(opset=args.opset, optimize=args.optimize, precision=precision), out)
    except ImportError as e:
        log.error("cannot export: packages missing (%s): pip install 'iei[onnx]'", e.name)
        return 2
    except (ModelNotFound, BackendError, ValueError, OSError) as e:
        log.error("cannot export: %s", e)
        return 2
    print(f"exported {args.model} ({manifest.model_type}, {manifest.precision}, optimise {manifest.optimize}, "
          f"dim {manifest.embedding_dim}) to {out}; serve it with: iei serve --backend onnx --model {out}")
    return 0


def serve(settings: Settings) -> int:
    # Heavy imports here, so `iei --help` stays fast.
    import importlib
    import threading

    from backends import BackendError
    from iei.engine import EmbeddingEngine

    # The web stack imports on a thread while the model loads (this thread only waits for the model
    # process then); a daemon thread, so Ctrl-C during the load still exits at once.
    threading.Thread(target=importlib.import_module, args=("iei.server.runner",), daemon=True).start()
    try:
        engine = EmbeddingEngine.load(settings)  # the model process reports a missing model as a BackendError
    except (BackendError, ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
    if settings.frontends > 1:  # N HTTP processes feeding this one (iei.server.frontends)
        from iei.server.frontends import serve_with_frontends

        return serve_with_frontends(settings, engine)
    from iei.server import create_app
    from iei.server.runner import run_server

    return 0 if run_server(create_app(settings, engine), engine, settings) else 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args if args.command in ("serve", "embed") else None)
    from iei.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return serve(settings)
    if args.command == "export":
        return export(args)
    if args.command == "embed":
        from iei.bulk.command import embed

        return embed(args, settings)
    return 1


if __name__ == "__main__":
    sys.exit(main())
