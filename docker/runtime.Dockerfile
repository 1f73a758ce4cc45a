# The kaito runtime: inference server, tuning job, input pullers and the adapter pusher
# (python -m kaito.runtime.inference | kaito.runtime.tuning). One image serves both, as the
# operator's KAITO_RUNTIME_IMAGE is one image.
# Both variants carry the llamacpp extra (xllamacpp, a CPU build, ~100 MB): the operator picks
# `--engine llamacpp` for GGUF presets on GPU-less nodes whichever runtime image the cluster
# runs, and for the `kaito.sh/runtime: llamacpp` annotation on any node.
#
# CPU (default; torch from PyPI, which carries its CUDA libraries, see docker/README.md):
#   docker build -f docker/runtime.Dockerfile -t kaito-runtime:cpu .
# CPU, smaller, where the PyTorch CPU index is reachable: --build-arg TORCH_INDEX=cpu
# CUDA (vLLM and bitsandbytes from the gpu extra; vLLM's wheels are built for CUDA 13):
#   docker build -f docker/runtime.Dockerfile -t kaito-runtime:cuda \
#     --build-arg BASE=nvidia/cuda:13.0.2-base-ubuntu24.04 \
#     --build-arg EXTRAS=inference,tuning,llamacpp,gpu .
# Inference only (torch engine; add llamacpp for GGUF presets): --build-arg EXTRAS=inference
# CPU from plain PyPI without the GPU-only CUDA libraries: --build-arg CUDA_LIBS=loaded
# Without a daemon: `kaito dev images build` (buildah; passes BASE, see docker/README.md).
#
# Runs as UID 10001 (a CUDA base already has UID 1000). The workloads the operator creates mount /mnt/*, /workspace and /dev/shm;
# caches go to $HOME (/home/kaito) or the HF_HOME volume the tuning Job sets.

# Any Debian or Ubuntu image; python3 (>= 3.11) and its venv module are installed when missing.
ARG BASE=python:3.11.13-slim-bookworm

FROM ${BASE} AS build
# uv matches tools/setup.sh's, so a dev build can mount the developer's uv cache at /root/.cache/uv.
ARG UV_VERSION=0.13.9
# Build-time settings (ARG, not ENV: none of them belongs in the image): the system trust store
# (a dev build lends the host's, see docker/README.md), uv's cache in the cache mount whatever
# HOME is, no Python downloads.
ARG UV_SYSTEM_CERTS=true
ARG UV_LINK_MODE=copy
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PYTHON_DOWNLOADS=never
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA bases are Ubuntu without Python; Debian-based ones already have it.
# Unpinned apt versions (DL3008): the package versions differ between the slim and CUDA bases.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv build --wheel --out-dir /wheels .

FROM ${BASE}
# Empty: plain PyPI. `cpu` or `cu130`: that PyTorch index first (its CPU wheels are ~10x smaller).
ARG TORCH_INDEX=""
# gguf (LoRA to GGUF conversion for llama.cpp adapters) comes with inference and tuning.
ARG EXTRAS=inference,tuning,llamacpp
# `loaded` (CPU images from plain PyPI): keep only the CUDA libraries importing torch loads; the
# rest of PyPI torch's nvidia-* wheels is GPU-only (docker/prune_cuda_libs.py).
# (ARGs stay above SHELL: hadolint 2.15 forgets the SHELL after a later ARG.)
ARG CUDA_LIBS=all
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/kaito \
    PATH=/opt/kaito/bin:$PATH \
    HOME=/home/kaito
ARG UV_SYSTEM_CERTS=true
ARG UV_LINK_MODE=copy
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PYTHON_DOWNLOADS=never
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The xllamacpp wheel links the system OpenMP runtime (libgomp.so.1; it does not bundle it), which
# the slim and CUDA bases lack.
# hadolint ignore=DL3008
RUN packages=(); \
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then \
      packages+=(python3 python3-venv ca-certificates); \
    fi; \
    if ! compgen -G '/usr/lib/*/libgomp.so.1' >/dev/null; then packages+=(libgomp1); fi; \
    if [ "${#packages[@]}" -gt 0 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends "${packages[@]}" \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv --without-pip /opt/kaito \
 && groupadd --gid 10001 kaito \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kaito --shell /usr/sbin/nologin kaito \
 && install -d -o 10001 -g 10001 /workspace
# Dependencies (the torch stack, GBs) before the kaito wheel: a change under src/ rebuilds only
# the layers after this one.
COPY pyproject.toml docker/prune_cuda_libs.py /opt/kaito/build/
RUN --mount=type=bind,from=build,source=/opt/uv,target=/opt/uv \
    --mount=type=cache,target=/root/.cache/uv \
    extras=(); for extra in ${EXTRAS//,/ }; do extras+=(--extra "$extra"); done \
 && index=(); if [ -n "$TORCH_INDEX" ]; then \
      index=(--index "https://download.pytorch.org/whl/${TORCH_INDEX}" --index-strategy unsafe-best-match); \
    fi \
 && /opt/uv/bin/uv pip install --python /opt/kaito/bin/python --compile-bytecode \
      "${index[@]}" -r /opt/kaito/build/pyproject.toml "${extras[@]}" \
 && if [ "$CUDA_LIBS" = loaded ]; then /opt/kaito/bin/python /opt/kaito/build/prune_cuda_libs.py; fi
COPY --from=build /wheels /wheels
RUN --mount=type=bind,from=build,source=/opt/uv,target=/opt/uv \
    --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv pip install --python /opt/kaito/bin/python --compile-bytecode --no-deps \
      /wheels/kaito-*.whl \
 && rm -rf /wheels
WORKDIR /workspace
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["python", "-m"]
CMD ["kaito.runtime.inference", "--help"]
