# The kaito operator: kopf controller and admission webhook (`kaito operator run`).
# Build from the repository root: docker build -f docker/operator.Dockerfile -t kaito-operator .
# The chart runs it as UID 65532 with a read-only root filesystem (only /tmp is writable).

# Exact patch release and Debian suite; pin by digest in CI (`python:3.11.13-slim-bookworm@sha256:...`).
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --disable-pip-version-check build==1.2.2 \
 && python -m build --wheel --outdir /wheels .

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# Only the operator extra: the runtime's torch stack has no place in the controller.
RUN pip install --no-cache-dir --disable-pip-version-check "$(ls /wheels/kaito-*.whl)[operator]" \
 && rm -rf /wheels \
 && groupadd --gid 65532 kaito \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kaito
USER 65532:65532
EXPOSE 9443 8080
ENTRYPOINT ["kaito", "operator", "run"]
