# The kaito runtime: inference server, tuning job, input pullers and the adapter pusher
# (python -m kaito.runtime.inference | kaito.runtime.tuning). One image serves both, as the
# operator's KAITO_RUNTIME_IMAGE is one image.
#
# CPU (default):
#   docker build -f docker/runtime.Dockerfile -t kaito-runtime:cpu .
# CUDA:
#   docker build -f docker/runtime.Dockerfile -t kaito-runtime:cuda \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=cu128 .
# Inference only (smaller): --build-arg EXTRAS=inference
#
# Runs as UID 10001 (a CUDA base already has UID 1000). The workloads the operator creates mount /mnt/*, /workspace and /dev/shm;
# caches go to $HOME (/home/kaito) or the HF_HOME volume the tuning Job sets.

ARG BASE=python:3.11.13-slim-bookworm
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --disable-pip-version-check build==1.2.2 \
 && python -m build --wheel --outdir /wheels .

FROM ${BASE}
ARG TORCH_INDEX=cpu
ARG EXTRAS=inference,tuning
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/kaito \
    PATH=/opt/kaito/bin:$PATH \
    HOME=/home/kaito
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA bases are Ubuntu without a Python venv module; the slim base already has Python 3.11.
# Unpinned apt versions (DL3008): the package versions differ between the slim and CUDA bases.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/kaito
COPY --from=build /wheels /wheels
# torch from the PyTorch index of the variant (CPU wheels are ~10x smaller than CUDA ones).
RUN pip install --no-cache-dir --disable-pip-version-check \
      --extra-index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
      "$(ls /wheels/kaito-*.whl)[${EXTRAS}]" \
 && rm -rf /wheels \
 && groupadd --gid 10001 kaito \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kaito --shell /usr/sbin/nologin kaito \
 && install -d -o 10001 -g 10001 /workspace
WORKDIR /workspace
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["python", "-m"]
CMD ["kaito.runtime.inference", "--help"]
