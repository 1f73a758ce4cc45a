#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok)
# from the Go module proxy, plus kwok's stage configurations and the Karpenter NodeClaim CRD module.
#
# Everything lands outside the repository: binaries in $KAITO_HOME/k8s/<version>/bin, generated
# wrapper modules in $KAITO_HOME/k8s/<version>/build. A component is rebuilt only when its
# `--version` no longer matches the requested one, so a rerun takes about a second.
#
# Environment:
#   K8S_VERSION        k8s.io/kubernetes tag without the "v"   (default 1.34.4)
#   ETCD_VERSION       go.etcd.io/etcd/server/v3 tag            (default v3.6.16)
#   KWOK_VERSION       sigs.k8s.io/kwok tag                     (default v0.8.0)
#   KARPENTER_VERSION  sigs.k8s.io/karpenter tag (NodeClaim CRD) (default v1.15.0)
#   KAITO_HOME         cache root                               (default ~/.cache/kaito)
#   K8S_BIN_DIR        override the binary directory
#   K8S_BUILD_PGO      "off" (default) or "auto": profile-guided optimisation makes the build slower
#                      and only speeds up a production apiserver, which tests are not.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
KARPENTER_VERSION="${KARPENTER_VERSION:-v1.15.0}"
KAITO_HOME="${KAITO_HOME:-$HOME/.cache/kaito}"
BASE="$KAITO_HOME/k8s/$K8S_VERSION"
OUT="${K8S_BIN_DIR:-$BASE/bin}"
WORK="$BASE/build"
PGO="${K8S_BUILD_PGO:-off}"

log() { printf '\033[1m[control-plane]\033[0m %s\n' "$*" >&2; }

command -v go >/dev/null || { echo "go is required (Go >= 1.24) to build the control plane" >&2; exit 1; }
mkdir -p "$OUT" "$WORK"

# `go mod download -json` prints one JSON object; pick a field without needing jq.
mod_field() { go mod download -json "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }

MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
STAGING="v0.${K8S_VERSION#1.}"   # staging modules are tagged v0.X.Y alongside k8s.io/kubernetes v1.X.Y
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler)

k8s_built() {
  local b
  for b in "${K8S_BINS[@]}"; do
    [ -x "$OUT/$b" ] && [ "$("$OUT/$b" --version 2>/dev/null)" = "Kubernetes v$K8S_VERSION" ] || return 1
  done
}

build_k8s() {
  local dir="$WORK/kubernetes" kmod m ldf p
  log "building kube-apiserver, kube-controller-manager, kube-scheduler v$K8S_VERSION (pgo=$PGO)"
  mkdir -p "$dir" && cd "$dir" && rm -f go.mod go.sum
  go mod init local.test/k8s-control-plane >/dev/null 2>&1
  go mod edit -go=1.24.0 -godebug=default=go1.24
  # The kubernetes module requires each staging module at v0.0.0 and maps it to ./staging/...;
  # replace directives only bind in the main module, so pin every one of them here.
  kmod="$(mod_field "k8s.io/kubernetes@v$K8S_VERSION" GoMod)"
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$kmod"); do
    go mod edit -replace="$m=$m@$STAGING"
  done
  go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION" \
    -tool=k8s.io/kubernetes/cmd/kube-apiserver \
    -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
    -tool=k8s.io/kubernetes/cmd/kube-scheduler
  go mod tidy
  # Same variables as upstream hack/lib/version.sh: without them --version prints v0.0.0-master.
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  CGO_ENABLED=0 go build -trimpath -pgo="$PGO" -tags=selinux,notest,grpcnotrace -ldflags="$ldf" \
    -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
}

etcd_built() {
  [ -x "$OUT/etcd" ] && "$OUT/etcd" --version 2>/dev/null | grep -qx "etcd Version: ${ETCD_VERSION#v}"
}

build_etcd() {
  local dir="$WORK/etcd" ldf
  log "building etcd $ETCD_VERSION"
  mkdir -p "$dir" && cd "$dir" && rm -f go.mod go.sum
  # etcd's server module replaces its sibling modules with ../api etc., so `go install` refuses it;
  # as a requirement of a wrapper module those replaces are ignored and the tagged siblings are used.
  go mod init local.test/etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" -tool=go.etcd.io/etcd/server/v3
  go mod tidy
  ldf="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
  CGO_ENABLED=0 go build -trimpath -ldflags="$ldf" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
}

kwok_built() {
  [ -x "$OUT/kwok" ] && "$OUT/kwok" --version 2>/dev/null | grep -q "${KWOK_VERSION#v}"
}

build_kwok() {
  log "installing kwok $KWOK_VERSION"
  # kwok's go.mod has no replace directives, so a plain go install resolves it on its own
  # (mixing it into the kubernetes wrapper would downgrade its client libraries).
  GOBIN="$OUT" CGO_ENABLED=0 go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

write_kwok_stages() {
  local dir f
  dir="$(mod_field "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)"
  # kwokctl's "fast" defaults; standalone kwok has none and refuses to start without stages.
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    cat "$dir/kustomize/stage/$f"
  done > "$OUT/kwok-stages.yaml.tmp"
  mv "$OUT/kwok-stages.yaml.tmp" "$OUT/kwok-stages.yaml"
}

prefetch_karpenter() {
  # Only the CRD is needed. `go mod download` fetches the module zip even when the module's
  # go.mod asks for a newer Go than this one (it then refuses to extract it), so read the file
  # from the zip and keep a copy next to the binaries, where tests find it offline.
  { go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" || true; } | python3 -c '
import json, sys, zipfile
info = json.load(sys.stdin)
inner = "pkg/apis/crds/karpenter.sh_nodeclaims.yaml"
if "Zip" not in info:
    sys.exit("cannot download sigs.k8s.io/karpenter: %s" % info.get("Error"))
with zipfile.ZipFile(info["Zip"]) as z:
    sys.stdout.write(z.read("%s@%s/%s" % (info["Path"], info["Version"], inner)).decode())
' > "$OUT/karpenter.sh_nodeclaims.yaml.tmp"
  mv "$OUT/karpenter.sh_nodeclaims.yaml.tmp" "$OUT/karpenter.sh_nodeclaims.yaml"
  echo "$KARPENTER_VERSION" > "$OUT/karpenter.version"
}

k8s_built || (build_k8s)
etcd_built || (build_etcd)
kwok_built && [ -s "$OUT/kwok-stages.yaml" ] || { (build_kwok) && write_kwok_stages; }
[ -s "$OUT/karpenter.sh_nodeclaims.yaml" ] \
  && [ "$(cat "$OUT/karpenter.version" 2>/dev/null)" = "$KARPENTER_VERSION" ] || prefetch_karpenter

# Record what is in the directory so the Python harness can check versions without running binaries.
cat > "$OUT/versions.env.tmp" <<EOF
K8S_VERSION=$K8S_VERSION
ETCD_VERSION=$ETCD_VERSION
KWOK_VERSION=$KWOK_VERSION
KARPENTER_VERSION=$KARPENTER_VERSION
EOF
mv "$OUT/versions.env.tmp" "$OUT/versions.env"
log "ready in $OUT: $("$OUT/kube-apiserver" --version), $("$OUT/etcd" --version | head -1), kwok $KWOK_VERSION"
