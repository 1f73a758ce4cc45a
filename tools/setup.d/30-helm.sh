#!/usr/bin/env bash
# `make test` hook: the helm binary for the e2e tier, built from the Go module proxy into
# $KAITO_HOME/bin (outside the repository). Instant when the wanted version is already there.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
BIN="$KAITO_HOME/bin"

if [ -x "$BIN/helm" ] && "$BIN/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  exit 0
fi
if ! command -v go >/dev/null; then
  # Without helm the e2e tests skip, unless CI demands the cluster tiers.
  if [ "${KAITO_REQUIRE_CLUSTER:-0}" = "1" ]; then
    echo "KAITO_REQUIRE_CLUSTER=1 but go is not installed: cannot build helm" >&2
    exit 1
  fi
  echo "go not found: skipping the helm build; tests/e2e will be skipped" >&2
  exit 0
fi
mkdir -p "$BIN"
echo "[helm] building helm $HELM_VERSION into $BIN (first time: a few minutes)" >&2
# helm reads its version from ldflags; without them `helm version` says v3.x-dev-like text.
GOBIN="$BIN" CGO_ENABLED=0 go install \
  -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
"$BIN/helm" version --short >&2
