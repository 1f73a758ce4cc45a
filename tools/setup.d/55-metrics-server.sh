#!/usr/bin/env bash
# `make test` hook: build metrics-server (the resource-metrics API the HPA reads for `cpu`) from
# the Go module proxy into $KAITO_HOME/metrics-server/<version>/bin. About a second when built;
# the first build takes minutes (measured in docs/operator.md, "Replicas, InferenceSets and
# autoscaling"). Without Go the e2e autoscaling test skips, unless CI demands every tier.
set -euo pipefail

METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
OUT="$KAITO_HOME/metrics-server/$METRICS_SERVER_VERSION/bin"

log() { printf '\033[1m[metrics-server]\033[0m %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ]; then
    echo "[metrics-server] KAITO_REQUIRE_CLUSTER=1 but go is not installed" >&2
    exit 1
  fi
  log "go not found: skipping; the real-node autoscaling test will be skipped"
  exit 0
fi

# --version prints the gitVersion stamped below, so a stale or foreign binary is rebuilt.
if [ -x "$OUT/metrics-server" ] \
  && [ "$("$OUT/metrics-server" --version 2>/dev/null)" = "$METRICS_SERVER_VERSION" ]; then
  exit 0
fi

mkdir -p "$OUT"
log "building metrics-server $METRICS_SERVER_VERSION"
started=$(date +%s)
# Its go.mod has no replace directives, so `go install` resolves it on its own. Static
# (CGO_ENABLED=0): the binary is the only file of the image the real node runs.
p=k8s.io/client-go/pkg/version
GOBIN="$OUT" CGO_ENABLED=0 go install -trimpath \
  -ldflags="-s -w -X $p.gitVersion=$METRICS_SERVER_VERSION" \
  "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
log "ready in $OUT after $(($(date +%s) - started)) s: $("$OUT/metrics-server" --version)"
