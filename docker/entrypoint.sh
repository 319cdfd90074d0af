#!/bin/sh
# Entrypoint of the IEI images (Dockerfile, Dockerfile.gpu); runs outside Docker too (tests/deploy).
#
#   (no arguments) | serve [FLAGS]   iei serve (flags and IEI_* variables as documented)
#   --FLAG ...                       iei serve --FLAG ...
#   embed ... | export ...           that iei subcommand
#   healthcheck                      exit 0 if GET /health on this container's port answers 200
#   anything else                    run it as a command (a shell, say)
#
# A model exported into the image at build time (IEI_BAKED_MODEL, default /opt/iei/model, holding
# iei-export.json) is served with the onnx backend unless IEI_MODEL / IMAGE_EMBEDDING_MODEL name
# another model.
set -eu

PYTHON=${IEI_PYTHON:-python}
BAKED=${IEI_BAKED_MODEL:-/opt/iei/model}

use_baked_model() {
    if [ -f "$BAKED/iei-export.json" ] && [ -z "${IEI_MODEL:-}" ] && [ -z "${IMAGE_EMBEDDING_MODEL:-}" ] \
        && [ -z "${MODEL_ID:-}" ]; then
        IEI_MODEL=$BAKED
        IEI_BACKEND=${IEI_BACKEND:-onnx}
        export IEI_MODEL IEI_BACKEND
    fi
}

healthcheck() {
    port=${IEI_PORT:-${PORT:-8000}}
    exec "$PYTHON" - "$port" <<'PY'
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as e:  # refused, timed out, or 503 (HTTPError)
    print(f"unhealthy: {e}", file=sys.stderr)
    sys.exit(1)
PY
}

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    healthcheck) healthcheck ;;
    serve) shift; use_baked_model; exec "$PYTHON" -m iei serve "$@" ;;
    -*) use_baked_model; exec "$PYTHON" -m iei serve "$@" ;;
    embed) use_baked_model; exec "$PYTHON" -m iei "$@" ;;
    export) exec "$PYTHON" -m iei "$@" ;;
    *) exec "$@" ;;
esac
