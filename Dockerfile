# syntax=docker/dockerfile:1
# e5studio server image: `e5studio serve` on port 8000; readiness on /ready, liveness on /health.
#
#   docker build -t e5studio:cpu .
#   docker run -p 8000:8000 -v e5studio-data:/data e5studio:cpu                  # SQLite store in /data
#   docker run -p 8000:8000 -e E5STUDIO_STORE=postgres://user:pass@db/e5studio e5studio:cpu  # replicas: deploy/
#
# CPU by default: torch comes from PyTorch's CPU index (an unpinned `pip install torch` pulls a multi-GB CUDA
# build). CUDA variant: the same file with another torch index; the CUDA wheels bring their own CUDA runtime
# libraries, so the slim Python base stays; the host needs the NVIDIA driver and container toolkit:
#
#   docker build -t e5studio:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all -p 8000:8000 e5studio:cuda           # --device auto picks the GPU (bf16/fp16)
#
# Pick the cuXXX index that matches your driver (https://pytorch.org/get-started/locally/). BASE_IMAGE swaps the
# Python base (any Debian-based image with Python >= 3.10 and pip, e.g. a mirror of python:3.11-slim).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# the project's extras (postgres: psycopg, for a --store shared by replicas); add `batch` for the web UI's
# batch-embedding jobs (pyarrow), `train` for the loss plot
ARG EXTRAS=serve,onnx,postgres
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/e5studio
ENV PATH=/opt/e5studio/bin:$PATH
# torch first, from the chosen index, so that installing the project finds it satisfied
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install "/src[${EXTRAS}]"

FROM ${BASE_IMAGE}
ENV PATH=/opt/e5studio/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    HF_HUB_DISABLE_TELEMETRY=1
RUN groupadd --system --gid 10001 e5studio \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin e5studio \
 && mkdir -p /data /models && chown 10001:10001 /data /models && chmod 0700 /data
COPY --from=build /opt/e5studio /opt/e5studio
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# ready = the models of the endpoints found at start are loaded here (a first start may download one first)
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
# later arguments win: `docker run IMAGE --data-dir /elsewhere --model e5-base-v2`
ENTRYPOINT ["e5studio", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
