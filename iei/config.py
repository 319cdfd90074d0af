"""Server settings: one frozen object, built once from CLI flags and environment variables.

Every field is a flag of `iei serve` and an environment variable; its help text below is the
`--help` text. Nothing else in the project reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iei.preprocess.spec import DECODABLE_FORMATS, DEFAULT_FORMATS

DEFAULT_MODEL = "google/vit-base-patch16-224"


def _opt(default: Any, help: str, *, env: Sequence[str] = (), choices: Sequence[str] | None = None, flag: str | None = None):
    """A settings field with its CLI/env metadata. The first env name is the documented one."""
    return field(default=default, metadata={"help": help, "env": tuple(env), "choices": choices, "flag": flag})


@dataclass(frozen=True)
class Settings:
    # Model
    model: str = _opt(DEFAULT_MODEL, "Hugging Face hub id or local folder of an image model.",
                      env=("IMAGE_EMBEDDING_MODEL", "IEI_MODEL", "MODEL_ID"))
    revision: str | None = _opt(None, "Model revision (branch, tag or commit) on the hub.", env=("IEI_REVISION", "REVISION"))
    load_format: str = _opt("auto", "auto: load real weights with from_pretrained. dummy: build the model's real "
                            "architecture with RANDOM weights, offline (for tests, benchmarks and demos).",
                            env=("IEI_LOAD_FORMAT",), choices=("auto", "dummy"))
    served_model_name: str | None = _opt(None, "Name reported in /info and /v1/embeddings (default: the model id).",
                                         env=("IEI_SERVED_MODEL_NAME", "SERVED_MODEL_NAME"))
    pooling: str | None = _opt(None, "Pooling: mean (default for ViT/DeiT/BEiT/Swin/ConvNeXt/AIMv2 vision-only), cls "
                               "(default for DINOv2), pooler (default for SigLIP and DINOv3), projection (the projected embedding, "
                               "default for CLIP/MetaCLIP 2/AIMv2 LiT) or cls+mean (DINOv2). Text embeddings need the "
                               "family's default. Required for a model type not in docs/models.md (mean or pooler).",
                               env=("IEI_POOLING", "POOLING"))
    # Runtime
    backend: str = _opt("torch", "Model runtime.", env=("IEI_BACKEND",),
                       choices=("torch", "onnx", "tensorrt"))
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda or cuda:N.", env=("IEI_DEVICE",))
    dtype: str = _opt("auto", "auto: float16 on CUDA; on the CPU bfloat16 where it has bf16 units "
                      "(amx_bf16, avx512_bf16) and a parity probe against float32 passes (cosine >= 0.9999), else "
                      "float32. float32, float16 or bfloat16 force that precision.",
                      env=("IEI_DTYPE", "DTYPE"), choices=("auto", "float32", "float16", "bfloat16"))
    backend_threads: int = _opt(0, "CPU threads for the model (0: one per core). ONNX Runtime's idle threads sleep "
                                "rather than spin, so they leave the cores to the preprocessing workers.",
                                env=("IEI_BACKEND_THREADS",))
    onnx_optimize: str = _opt("O2", "onnx/tensorrt: graph optimisation of the exported model. O1/O2 keep parity "
                              "with torch (<= 1e-6); O3 adds approximate GELU (~3e-4).", env=("IEI_ONNX_OPTIMIZE",),
                              choices=("none", "O1", "O2", "O3"))
    quantize: str = _opt("none", "onnx on CPU: int8 = dynamic int8 quantisation (weights int8 for the detected "
                         "instruction set); faster, cosine >= 0.999 to float32.", env=("IEI_QUANTIZE",),
                         choices=("none", "int8"))
    onnx_cache_dir: str | None = _opt(None, "onnx/tensorrt: where exported models (and TensorRT engines) are cached "
                                      "(default: $HF_HOME/iei/onnx, else ~/.cache/iei/onnx).",
                                      env=("IEI_ONNX_CACHE_DIR",))
    allow_cpu_fallback: bool = _opt(False, "onnx/tensorrt: run on the CPU provider when the requested GPU provider "
                                    "is missing, instead of refusing to start.", env=("IEI_ALLOW_CPU_FALLBACK",))
    # HTTP
    host: str = _opt("0.0.0.0", "Address to listen on.", env=("IEI_HOST",))
    port: int = _opt(8000, "Port to listen on.", env=("IEI_PORT", "PORT"))
    api_key: str | None = _opt(None, "If set, inference routes and /info require `Authorization: "
                               "Bearer <key>` (/health and /metrics stay open).", env=("IEI_API_KEY", "API_KEY"))
    payload_limit: int = _opt(64 * 1024 * 1024, "Largest request body in bytes (413 above it).",
                              env=("IEI_PAYLOAD_LIMIT", "PAYLOAD_LIMIT"))
    request_timeout_ms: float = _opt(0.0, "Default deadline of a request (ms; 0: none). A request still queued "
                                     "when its deadline passes is dropped before inference (504). Clients may "
                                     "set their own with the `x-request-timeout-ms` header.",
                                     env=("IEI_REQUEST_TIMEOUT_MS",))
    http_workers: str = _opt("auto", "HTTP front-end processes serving the port (each its own SO_REUSEPORT "
                             "socket), feeding one engine that batches across all of them. auto: one per 8 cores "
                             "(1 below 16 cores), at most 8.", env=("IEI_HTTP_WORKERS",))
    shutdown_timeout_s: float = _opt(30.0, "On SIGTERM/SIGINT: stop accepting, then wait this long for in-flight "
                                     "requests before closing.", env=("IEI_SHUTDOWN_TIMEOUT_S",))
    # URL inputs
    allow_url_inputs: bool = _opt(False, "Accept http(s) URLs in `inputs` and fetch them (off by default). Only "
                                  "public addresses unless --url-allowlist names others.",
                                  env=("IEI_ALLOW_URL_INPUTS",))
    url_allowlist: str = _opt("", "Comma-separated addresses or CIDR networks that URL inputs may reach although "
                              "they are not public (loopback, private, link-local, ...).", env=("IEI_URL_ALLOWLIST",))
    url_max_bytes: int = _opt(20 * 1024 * 1024, "Largest image fetched from a URL, in bytes (422 above it).",
                              env=("IEI_URL_MAX_BYTES",))
    url_timeout_ms: float = _opt(10_000.0, "Time limit for fetching one URL input, redirects included (ms).",
                                 env=("IEI_URL_TIMEOUT_MS",))
    # Batching and admission
    max_batch_size: int = _opt(32, "Largest batch of images sent to the model at once.",
                               env=("IEI_MAX_BATCH_SIZE", "MAX_BATCH_SIZE"))
    max_batch_delay_ms: float = _opt(2.0, "How long a batch may wait for more images while the model is busy (ms); "
                                     "longer while the running batch will take longer. An idle model never waits.", env=("IEI_MAX_BATCH_DELAY_MS",))
    max_concurrent_requests: int = _opt(512, "Images admitted at once across all requests; beyond it, 429.",
                                        env=("IEI_MAX_CONCURRENT_REQUESTS", "MAX_CONCURRENT_REQUESTS"))
    max_client_batch_size: int = _opt(64, "Most images in one request (422 above it).",
                                      env=("IEI_MAX_CLIENT_BATCH_SIZE", "MAX_CLIENT_BATCH_SIZE"))
    batch_timeout_ms: float = _opt(120_000.0, "Watchdog: a batch the model has not answered after this long "
                                   "fails (424) and the model process is restarted (ms; 0: no watchdog).",
                                   env=("IEI_BATCH_TIMEOUT_MS",))
    # Preprocessing
    preprocess_workers: int = _opt(0, "Image decoding processes (0: one per core).", env=("IEI_PREPROCESS_WORKERS",))
    max_image_pixels: int = _opt(100_000_000, "Largest image accepted, in pixels (checked before decoding).",
                                 env=("IEI_MAX_IMAGE_PIXELS",))
    image_formats: str = _opt(",".join(DEFAULT_FORMATS).lower(), "Allowed image formats, comma-separated, from "
                              f"{', '.join(DECODABLE_FORMATS).lower()}. Others (SVG, PDF, ...) get 422.",
                              env=("IEI_IMAGE_FORMATS",))
    decode_timeout_ms: float = _opt(10_000.0, "Longest time one image may take to decode and resize (ms; 0: no "
                                    "limit); 422 above it. A worker stuck past twice the limit is replaced.",
                                    env=("IEI_DECODE_TIMEOUT_MS",))
    draft_decode: bool = _opt(True, "Decode large JPEGs at reduced size in the DCT domain before resizing "
                              "(faster; --no-draft-decode for the exact path).", env=("IEI_DRAFT_DECODE",))
    jpeg_decoder: str = _opt("auto", "With --draft-decode: auto decodes baseline JPEGs with simplejpeg where "
                             "libjpeg-turbo's 3/8..7/8 scales decode fewer pixels than Pillow's 1/2, 1/4, 1/8 "
                             "(faster, same tolerance); pillow always uses Pillow.", env=("IEI_JPEG_DECODER",),
                             choices=("auto", "pillow"))
    # Background batch jobs (/batches)
    batch_jobs: bool = _opt(True, "Accept background batch jobs on /batches (run at lower priority than online "
                            "requests; kept in --batch-db).", env=("IEI_BATCH_JOBS",))
    batch_db: str | None = _opt(None, "SQLite file holding batch jobs, their inputs and results; jobs left "
                                "unfinished are resumed at start. One server per file (default: "
                                "$HF_HOME/iei/batches.sqlite3, else ~/.cache/iei/batches.sqlite3).",
                                env=("IEI_BATCH_DB",))
    batch_input_root: str | None = _opt(None, 'Folder that batch jobs may read images from ({"path": ...} lines, '
                                        "relative to it; a path resolving outside it fails). Unset: base64 "
                                        "images only.", env=("IEI_BATCH_INPUT_ROOT",))
    batch_job_workers: int = _opt(1, "Preprocessing processes that decode batch-job images, at the lowest CPU "
                                  "priority (nice 19): online requests never wait behind them. Each lets 2 more job images "
                                  "be in flight (bigger job batches: raise it on a GPU).", env=("IEI_BATCH_JOB_WORKERS",))
    batch_max_inputs: int = _opt(1_000_000, "Most lines in one batch job (422 above it).",
                                 env=("IEI_BATCH_MAX_INPUTS",))
    # Logging
    log_format: str = _opt("text", "Log line format.", env=("IEI_LOG_FORMAT", "LOG_FORMAT"), choices=("text", "json"))
    log_level: str = _opt("info", "Log level.", env=("IEI_LOG_LEVEL", "LOG_LEVEL"),
                          choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        positive = ("payload_limit", "max_batch_size", "max_concurrent_requests", "max_client_batch_size",
                    "max_image_pixels", "url_max_bytes", "url_timeout_ms", "batch_max_inputs",
                    "batch_job_workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_batch_delay_ms", "preprocess_workers", "backend_threads", "request_timeout_ms",
                     "shutdown_timeout_s", "batch_timeout_ms", "decode_timeout_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.http_workers != "auto" and not (self.http_workers.isdigit() and 1 <= int(self.http_workers) <= 64):
            raise ValueError(f"http_workers must be auto or a number from 1 to 64, got {self.http_workers!r}")
        try:
            self.url_allowlist_networks  # noqa: B018  # parse it once, to fail at start-up
        except ValueError as e:
            raise ValueError(f"url_allowlist: {e}") from None
        unknown = [name for name in self.image_format_names if name not in DECODABLE_FORMATS]
        if unknown or not self.image_format_names:
            raise ValueError(f"image_formats: choose from {', '.join(DECODABLE_FORMATS).lower()}, got "
                             f"{self.image_formats!r}")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def onnx_cache_path(self) -> str:
        """`onnx_cache_dir`, or its default under $HF_HOME (else ~/.cache/iei/onnx)."""
        if self.onnx_cache_dir:
            return self.onnx_cache_dir
        hf_home = os.environ.get("HF_HOME")
        return os.path.join(hf_home, "iei", "onnx") if hf_home else os.path.expanduser("~/.cache/iei/onnx")

    @property
    def batch_db_path(self) -> str:
        """`batch_db`, or its default under $HF_HOME (else ~/.cache/iei)."""
        if self.batch_db:
            return self.batch_db
        hf_home = os.environ.get("HF_HOME")
        return os.path.join(hf_home, "iei", "batches.sqlite3") if hf_home else os.path.expanduser(
            "~/.cache/iei/batches.sqlite3")

    @property
    def url_allowlist_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """`url_allowlist` parsed: comma-separated addresses or CIDR networks. Raises ValueError."""
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in self.url_allowlist.split(",") if part.strip())

    @property
    def image_format_names(self) -> tuple[str, ...]:
        return tuple(name.strip().upper() for name in self.image_formats.split(",") if name.strip())

    @property
    def frontends(self) -> int:
        """HTTP front-end processes: `http_workers`, with `auto` resolved from the core count."""
        if self.http_workers == "auto":
            return auto_http_workers(os.cpu_count() or 1)
        return int(self.http_workers)

    @property
    def workers(self) -> int:
        return self.preprocess_workers or os.cpu_count() or 1


def auto_http_workers(cores: int) -> int:
    """One front end per 8 cores, at most 8. One HTTP process costs about 0.7 CPU-ms per request
    (uvicorn, Litestar, JSON, base64) and tops out near 1,400 requests/s; the engine's event loop, the
    decoders and the model need the other cores. Below 16 cores a second front end only takes cores from
    the decoders (on 2 cores it costs as much CPU per request and gains nothing), so small hosts keep 1."""
    return max(1, min(8, cores // 8))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(f: dataclasses.Field, text: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("bool"):
        return _parse_bool(text)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def add_settings_arguments(parser: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """One flag per Settings field (except those named in `exclude`); defaults stay unset so the
    environment can fill them."""
    for f in dataclasses.fields(Settings):
        if f.name in exclude:
            continue
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        envs = ", ".join(meta["env"])
        help_text = f"{meta['help']} [env: {envs}; default: {f.default}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, choices=meta["choices"], help=help_text,
                                type=lambda text, f=f: _convert(f, text))


def settings_from(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value
            continue
        for name in f.metadata["env"]:
            if environ.get(name, "") != "":
                try:
                    values[f.name] = _convert(f, environ[name])
                except ValueError as e:
                    raise SystemExit(f"invalid value for {name}: {environ[name]!r} ({e})") from None
                choices = f.metadata["choices"]
                if choices and values[f.name] not in choices:
                    raise SystemExit(f"invalid value for {name}: {environ[name]!r} (choose from {', '.join(choices)})")
                break
    try:
        return Settings(**values)
    except ValueError as e:
        raise SystemExit(f"invalid settings: {e}") from None
