# The kaito operator: kopf controller and admission webhook (`kaito operator run`).
# Build from the repository root: docker build -f docker/operator.Dockerfile -t kaito-operator .
# Without a daemon: `kaito dev images build` (buildah; passes BASE, see docker/README.md).
# The chart runs it as UID 65532 with a read-only root filesystem (only /tmp is writable).

# Any Debian-like image with python3 (>= 3.11) and its venv module. Exact patch release and
# Debian suite; pin by digest in CI (`python:3.11.13-slim-bookworm@sha256:...`).
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
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv build --wheel --out-dir /wheels .

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/kaito \
    PATH=/opt/kaito/bin:$PATH
ARG UV_SYSTEM_CERTS=true
ARG UV_LINK_MODE=copy
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_PYTHON_DOWNLOADS=never
RUN python3 -m venv --without-pip /opt/kaito \
 && groupadd --gid 65532 kaito \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kaito
# Dependencies before the kaito wheel: a change under src/ rebuilds only the layers after this one.
# Only the operator extra: the runtime's torch stack has no place in the controller.
COPY pyproject.toml /opt/kaito/pyproject.toml
RUN --mount=type=bind,from=build,source=/opt/uv,target=/opt/uv \
    --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv pip install --python /opt/kaito/bin/python --compile-bytecode \
      -r /opt/kaito/pyproject.toml --extra operator
COPY --from=build /wheels /wheels
RUN --mount=type=bind,from=build,source=/opt/uv,target=/opt/uv \
    --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv pip install --python /opt/kaito/bin/python --compile-bytecode --no-deps \
      /wheels/kaito-*.whl \
 && rm -rf /wheels
USER 65532:65532
EXPOSE 9443 8080
ENTRYPOINT ["kaito", "operator", "run"]
