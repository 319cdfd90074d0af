# syntax=docker/dockerfile:1
# IEI on the CPU: torch (CPU build) and ONNX Runtime.
#
#   docker build -t iei:cpu .
#   docker run -p 8000:8000 -v iei-models:/models -e IEI_MODEL=google/vit-base-patch16-224 iei:cpu
#
# Same entrypoint, build-time export (IEI_EXPORT_MODEL, IEI_EXPORT_ARGS) and model cache as Dockerfile.gpu.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/iei/venv
ENV PATH=/opt/iei/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY iei ./iei
COPY backends ./backends
# The project itself (local source) carries its dependencies' ranges; torch and the runtimes are pinned.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir ".[torch,onnx,bulk]" "torch==${TORCH_VERSION}"

FROM ${PYTHON_IMAGE}
ARG IEI_EXPORT_MODEL=""
ARG IEI_EXPORT_ARGS=""
RUN useradd --create-home --uid 10001 --user-group iei \
    && mkdir -p /models /opt/iei/model \
    && chown iei:iei /models /opt/iei/model
COPY --from=build /opt/iei/venv /opt/iei/venv
COPY --chmod=755 docker/entrypoint.sh /usr/local/bin/iei-entrypoint
ENV PATH=/opt/iei/venv/bin:$PATH \
    HF_HOME=/models \
    IEI_HOST=0.0.0.0 \
    IEI_PORT=8000 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/iei
# IEI_EXPORT_ARGS is split into words on purpose (several flags).
# hadolint ignore=SC2086
RUN if [ -n "${IEI_EXPORT_MODEL}" ]; then \
        iei export "${IEI_EXPORT_MODEL}" --output /opt/iei/model ${IEI_EXPORT_ARGS}; \
    fi
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=300s --retries=3 CMD ["iei-entrypoint", "healthcheck"]
ENTRYPOINT ["iei-entrypoint"]
CMD ["serve"]
