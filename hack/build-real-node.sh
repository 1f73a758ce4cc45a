#!/usr/bin/env bash
# Build what a real CPU node of the dev cluster runs besides Debian's containerd/runc/CNI: kubelet
# and kube-proxy from the same k8s.io/kubernetes module as hack/build-control-plane.sh, and the
# pause program that containerd runs as every pod's sandbox (registry.k8s.io is unreachable), and
# the probe program the real-node tests run.
#
# Binaries land next to the control plane's, in $KAITO_HOME/k8s/<version>/bin. A component is
# rebuilt only when its version no longer matches, so a rerun takes about a second. With the
# control plane's Go build cache warm the first build takes about a minute.
#
# Environment: K8S_VERSION (default 1.34.4), KAITO_HOME (default ~/.cache/kaito), K8S_BIN_DIR.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
BASE="$KAITO_HOME/k8s/$K8S_VERSION"
OUT="${K8S_BIN_DIR:-$BASE/bin}"
WORK="$BASE/build"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
IMAGES_VERSION="2"   # bump when hack/node-images/ changes

log() { printf '\033[1m[real-node]\033[0m %s\n' "$*" >&2; }
command -v go >/dev/null || { echo "go is required to build kubelet and kube-proxy" >&2; exit 1; }
mkdir -p "$OUT" "$WORK"

mod_field() { go mod download -json "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
STAGING="v0.${K8S_VERSION#1.}"

node_built() {
  [ -x "$OUT/kubelet" ] && [ "$("$OUT/kubelet" --version 2>/dev/null)" = "Kubernetes v$K8S_VERSION" ] \
    && [ -x "$OUT/kube-proxy" ] && [ "$("$OUT/kube-proxy" --version 2>/dev/null)" = "Kubernetes v$K8S_VERSION" ]
}

build_node() {
  # Its own wrapper module with the same pins as the control plane's, so every package the two
  # share comes out of Go's build cache.
  local dir="$WORK/node" kmod m ldf p
  log "building kubelet, kube-proxy v$K8S_VERSION"
  mkdir -p "$dir" && cd "$dir" && rm -f go.mod go.sum
  go mod init local.test/k8s-node >/dev/null 2>&1
  go mod edit -go=1.24.0 -godebug=default=go1.24
  kmod="$(mod_field "k8s.io/kubernetes@v$K8S_VERSION" GoMod)"
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$kmod"); do
    go mod edit -replace="$m=$m@$STAGING"
  done
  go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION" \
    -tool=k8s.io/kubernetes/cmd/kubelet -tool=k8s.io/kubernetes/cmd/kube-proxy
  go mod tidy
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  CGO_ENABLED=0 go build -trimpath -pgo=off -tags=selinux,notest,grpcnotrace -ldflags="$ldf" \
    -o "$OUT/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

images_built() {
  [ -x "$OUT/pause" ] && [ -x "$OUT/probe" ] \
    && [ "$(cat "$OUT/node-images.version" 2>/dev/null)" = "$IMAGES_VERSION" ]
}

build_images() {
  # The pause program (every pod's sandbox) and the probe the real-node tests run: static
  # binaries that realnode.py packs as one-layer images.
  log "building the pause and probe programs"
  cd "$ROOT/hack/node-images"
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$OUT/pause" ./pause
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$OUT/probe" ./probe
  echo "$IMAGES_VERSION" > "$OUT/node-images.version"
}

node_built || (build_node)
images_built || (build_images)
log "ready in $OUT: kubelet $("$OUT/kubelet" --version), kube-proxy, pause, probe"
